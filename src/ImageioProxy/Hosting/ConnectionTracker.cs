using System.Collections.Concurrent;
using ImageioProxy.Configuration;
using ImageioProxy.Tickets;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Options;

namespace ImageioProxy.Hosting;

/// <summary>One accepted data connection (TCP or local unix socket).</summary>
public sealed class ClientConnection
{
    private readonly ConnectionContext _context;
    private int _activeRequests;
    private long _lastActivity;

    internal ClientConnection(ConnectionContext context, long now)
    {
        _context = context;
        _lastActivity = now;
        StartTimestamp = now;
    }

    public string Id => _context.ConnectionId;

    /// <summary>When the connection was accepted.</summary>
    public long StartTimestamp { get; }

    /// <summary>The socket's peer: "address:port" for TCP, "unix" for the local socket.</summary>
    public string Peer => _context.RemoteEndPoint is System.Net.IPEndPoint ip ? ip.ToString() : "unix";

    /// <summary>Operation counters for the CLOSE line.</summary>
    public Observability.ConnectionStats Stats { get; } = new();

    /// <summary>The ticket whose requests this connection made last; its inactivity timeout applies.</summary>
    public Ticket? Ticket { get; internal set; }

    public bool IsBusy => Volatile.Read(ref _activeRequests) > 0;

    public long LastActivity => Interlocked.Read(ref _lastActivity);

    internal void BeginRequest(long now)
    {
        Interlocked.Increment(ref _activeRequests);
        Interlocked.Exchange(ref _lastActivity, now);
    }

    internal void EndRequest(long now)
    {
        Interlocked.Exchange(ref _lastActivity, now);
        Interlocked.Decrement(ref _activeRequests);
    }

    internal void Abort() => _context.Abort(new ConnectionAbortedException("Inactivity timeout"));
}

/// <summary>Tracks data connections and enforces inactivity timeouts ourselves, because Kestrel's
/// KeepAliveTimeout is one value per server while imageio's applies per ticket (imageio-api.md §2):
/// a connection that has not used a ticket may idle Daemon:InactivityTimeout seconds, one that did may
/// idle its ticket's inactivity_timeout. A connection is never idle while any request of its ticket
/// runs, so clients waiting on one connection while another computes extents are not cut off.
/// The same sweep closes the NBD pools of tickets nobody uses any more.</summary>
public sealed partial class ConnectionTracker : IAsyncDisposable
{
    private readonly ConcurrentDictionary<string, ClientConnection> _connections = new();
    private readonly TimeProvider _time;
    private readonly TicketStore _tickets;
    private readonly DaemonOptions _daemon;
    private readonly ILogger<ConnectionTracker> _logger;
    private readonly ITimer _timer;

    public ConnectionTracker([FromKeyedServices(ProxyServer.ClockKey)] TimeProvider time, TicketStore tickets, IOptions<DaemonOptions> daemon, ILogger<ConnectionTracker> logger)
    {
        _time = time;
        _tickets = tickets;
        _daemon = daemon.Value;
        _logger = logger;
        _timer = time.CreateTimer(_ => Sweep(), null, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1));
    }

    public int Count => _connections.Count;

    /// <summary>True when no tracked connection is running a request (tests wait for it before moving a
    /// fake clock: a response reaches the client just before its request is marked as ended).</summary>
    public bool AllIdle => _connections.Values.All(c => !c.IsBusy);

    /// <summary>Kestrel connection middleware for data listeners.</summary>
    public ConnectionDelegate Middleware(ConnectionDelegate next) => async context =>
    {
        var connection = new ClientConnection(context, _time.GetTimestamp());
        _connections[context.ConnectionId] = connection;
        try
        {
            await next(context);
        }
        finally
        {
            _connections.TryRemove(context.ConnectionId, out _);
            connection.Ticket?.RemoveConnection(connection);
            Observability.ConnectionCloseLog.Write(_logger, connection, _time.GetElapsedTime(connection.StartTimestamp));
        }
    };

    public ClientConnection? Find(string connectionId) => _connections.GetValueOrDefault(connectionId);

    public void BeginRequest(ClientConnection connection) => connection.BeginRequest(_time.GetTimestamp());

    public void EndRequest(ClientConnection connection) => connection.EndRequest(_time.GetTimestamp());

    /// <summary>Binds the connection to the ticket it uses (imageio: the first request that opens a
    /// backend). Enforces the ticket's connection limit.</summary>
    public void Bind(ClientConnection connection, Ticket ticket)
    {
        if (ReferenceEquals(connection.Ticket, ticket))
        {
            return;
        }
        ticket.AddConnection(connection, _daemon.MaxConnections);
        connection.Ticket?.RemoveConnection(connection);
        connection.Ticket = ticket;
    }

    /// <summary>One pass over connections and tickets; runs every second, public for tests.</summary>
    public void Sweep()
    {
        var now = _time.GetTimestamp();
        foreach (var connection in _connections.Values)
        {
            if (connection.IsBusy)
            {
                continue;
            }
            var ticket = connection.Ticket;
            if (ticket is not null && ticket.IsActive)
            {
                continue;
            }
            var limit = TimeSpan.FromSeconds(ticket?.Spec.InactivityTimeout ?? _daemon.InactivityTimeout);
            if (limit <= TimeSpan.Zero)
            {
                continue; // 0 disables the timeout
            }
            var idle = _time.GetElapsedTime(connection.LastActivity, now);
            if (ticket is not null)
            {
                idle = TimeSpan.FromTicks(Math.Min(idle.Ticks, ticket.IdleTime.Ticks));
            }
            if (idle >= limit)
            {
                LogInactiveConnection(connection.Id, ticket?.Spec.TransferId ?? "-", (long)limit.TotalSeconds);
                connection.Abort();
            }
        }
        _tickets.CloseIdlePools();
    }

    public async ValueTask DisposeAsync() => await _timer.DisposeAsync();

    [LoggerMessage(EventId = 3001, Level = LogLevel.Information, Message = "Closing connection {ConnectionId} of transfer {TransferId}: idle for {Timeout} s")]
    private partial void LogInactiveConnection(string connectionId, string transferId, long timeout);
}
