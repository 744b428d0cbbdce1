using System.Collections.Concurrent;
using ImageioProxy.Configuration;
using ImageioProxy.DataPath;
using ImageioProxy.Hosting;
using ImageioProxy.Http;
using Microsoft.Extensions.Options;
using NbdClient;

namespace ImageioProxy.Tickets;

/// <summary>The installed tickets (imageio's Authorizer) and their NBD pools.</summary>
public sealed partial class TicketStore : IAsyncDisposable
{
    private readonly ConcurrentDictionary<string, Ticket> _tickets = new(StringComparer.Ordinal);
    private readonly TimeProvider _time;
    private readonly BackendOptions _backend;
    private readonly DaemonOptions _daemon;
    private readonly ControlOptions _control;
    private readonly ILogger<TicketStore> _logger;
    private readonly NbdPoolOptions _poolOptions;
    private readonly List<Task> _closing = [];

    public TicketStore([FromKeyedServices(ProxyServer.ClockKey)] TimeProvider time, IOptions<BackendOptions> backend, IOptions<DaemonOptions> daemon,
        IOptions<ControlOptions> control, ILoggerFactory loggerFactory)
    {
        _time = time;
        _backend = backend.Value;
        _daemon = daemon.Value;
        _control = control.Value;
        _logger = loggerFactory.CreateLogger<TicketStore>();
        GlobalBudget = new ByteBudget(_backend.MaxInFlightBytes);
        ChunkBuffers = new ChunkBufferPool(_backend.ChunkSize, _backend.MaxInFlightBytes);
        SplicePipes = new SplicePipePool(_backend.ChunkSize, MaxIdlePipes);
        _poolOptions = new NbdPoolOptions
        {
            MaxConnections = _backend.EffectiveNbdConnections,
            MaxRequestSize = _backend.NbdRequestSize,
            MaxPipeRequestSize = _backend.SpliceRequestSize,
            Connection = new NbdClientOptions
            {
                MetaContexts = [NbdMetaContexts.BaseAllocation, NbdMetaContexts.AllocationDepth],
                TimeProvider = time,
                LoggerFactory = loggerFactory,
                RequestTimeout = TimeSpan.FromSeconds(_backend.RequestTimeout),
                ConnectTimeout = TimeSpan.FromSeconds(_backend.ConnectTimeout),
                HandshakeTimeout = TimeSpan.FromSeconds(_backend.ConnectTimeout),
                SocketBufferSize = _backend.SocketBufferSize,
                ZeroCopyWrites = _backend.ZeroCopyWrites,
                MaxInFlight = MaxRequestsInFlight(_backend),
            },
            // Only connecting is retried, never a request: a write is not replayed after a later
            // overlapping one may have been sent; the client resends after a 5xx (docs/reliability.md).
            ReconnectAttempts = _backend.ReconnectAttempts,
            ReconnectDelay = TimeSpan.FromSeconds(_backend.ReconnectDelay),
            ReconnectMaxDelay = TimeSpan.FromSeconds(_backend.ReconnectMaxDelay),
            BreakerFailureThreshold = _backend.BreakerFailureThreshold,
            BreakerBreakDuration = TimeSpan.FromSeconds(_backend.BreakerBreakDuration),
            BreakerSamplingDuration = TimeSpan.FromSeconds(_backend.BreakerSamplingDuration),
        };
    }

    /// <summary>Requests one NBD connection may have in flight: enough that the byte budgets, not this count,
    /// bound the requests of a chunk cut into parts (a part waiting for a slot costs a thread-pool hop).</summary>
    internal static int MaxRequestsInFlight(BackendOptions backend)
    {
        var request = new[] { backend.NbdRequestSize, backend.SpliceRequestSize, backend.ChunkSize }.Where(size => size > 0).Min();
        return (int)Math.Clamp((backend.MaxInFlightBytes + request - 1) / request, 64, 4096);
    }

    /// <summary>In-flight bytes of the whole process.</summary>
    public ByteBudget GlobalBudget { get; }

    /// <summary>GET and PUT chunk buffers, as many as <see cref="GlobalBudget"/> lets exist.</summary>
    public ChunkBufferPool ChunkBuffers { get; }

    /// <summary>Idle pipes kept for spliced uploads: 16 MiB of pipe buffers by default, a quarter of the
    /// 64 MiB an unprivileged user may have before the kernel hands out small pipes.</summary>
    private const int MaxIdlePipes = 16;

    /// <summary>Pipes for spliced PUTs (Http:SpliceUploads).</summary>
    public SplicePipePool SplicePipes { get; }

    public TimeSpan RemoveTimeout => TimeSpan.FromSeconds(_control.RemoveTimeout);

    public int Count => _tickets.Count;

    /// <summary>inactivity_timeout of tickets that do not set one.</summary>
    public long DefaultInactivityTimeout => _daemon.InactivityTimeout;

    public Ticket Create(TicketSpec spec) =>
        new(spec, _time, new ByteBudget(_backend.MaxInFlightBytesPerTicket), (endpoint, ct) => ConnectAsync(endpoint, spec.Dirty, ct));

    /// <summary>Installs a ticket under its uuid. A ticket with the same uuid is replaced without being
    /// canceled (imageio does the same); its operations finish and its pool then closes.</summary>
    public void Add(TicketSpec spec)
    {
        var ticket = Create(spec);
        Ticket? replaced = null;
        _tickets.AddOrUpdate(spec.Uuid, ticket, (_, old) =>
        {
            replaced = old;
            return ticket;
        });
        LogTicketAdded(spec.TransferId, spec.Size, string.Join(",", spec.Ops), spec.Timeout, spec.InactivityTimeout, spec.Sparse, spec.Dirty);
        if (replaced is not null)
        {
            TrackClosing(RetireAsync(replaced));
        }
    }

    public Ticket? Find(string ticketId) => _tickets.GetValueOrDefault(ticketId);

    /// <summary>The installed tickets, for gauges.</summary>
    public IEnumerable<Ticket> All => _tickets.Values;

    /// <summary>imageio's Authorizer.authorize: exists, not canceled, not expired, may do op; else 403.
    /// The ticket id is not echoed in the error: it is a secret and clients log error bodies.</summary>
    public Ticket Authorize(string ticketId, TicketOp op)
    {
        if (!_tickets.TryGetValue(ticketId, out var ticket))
        {
            throw HttpErrorException.Forbidden("No such ticket");
        }
        if (ticket.IsCanceled)
        {
            throw HttpErrorException.Forbidden($"Transfer={ticket.Spec.TransferId} was canceled");
        }
        if (ticket.IsExpired)
        {
            throw HttpErrorException.Forbidden($"Transfer={ticket.Spec.TransferId} expired");
        }
        var allowed = op == TicketOp.Read ? ticket.Spec.MayRead : ticket.Spec.MayWrite;
        if (!allowed)
        {
            throw HttpErrorException.Forbidden($"Transfer={ticket.Spec.TransferId} forbids {(op == TicketOp.Read ? "read" : "write")}");
        }
        return ticket;
    }

    /// <summary>DELETE /tickets/{id}: cancels, waits for ongoing operations, flushes and closes the pool.
    /// Returns false (409) when operations are still running after the remove timeout. Unknown ids
    /// succeed: DELETE is idempotent.</summary>
    public async Task<bool> RemoveAsync(string ticketId, CancellationToken cancellationToken)
    {
        if (!_tickets.TryGetValue(ticketId, out var ticket))
        {
            return true;
        }
        LogTicketRemoving(ticket.Spec.TransferId);
        if (!await ticket.CancelAsync(RemoveTimeout, cancellationToken))
        {
            LogTicketBusy(ticket.Spec.TransferId, _control.RemoveTimeout);
            return false;
        }
        _tickets.TryRemove(new KeyValuePair<string, Ticket>(ticketId, ticket));
        await ClosePoolAsync(ticket, ticket.DetachPool(), flush: true);
        LogTicketRemoved(ticket.Spec.TransferId);
        return true;
    }

    /// <summary>DELETE /tickets/: removes every ticket. imageio drops them without canceling; we also
    /// cancel their operations, without waiting, and close their pools once they finish.</summary>
    public void Clear()
    {
        foreach (var (id, ticket) in _tickets)
        {
            if (_tickets.TryRemove(new KeyValuePair<string, Ticket>(id, ticket)))
            {
                TrackClosing(CancelAndCloseAsync(ticket));
            }
        }
        LogTicketsCleared();
    }

    /// <summary>Closes pools of tickets nobody used for their inactivity timeout (at least 10 s).</summary>
    public void CloseIdlePools()
    {
        foreach (var ticket in _tickets.Values)
        {
            var idleLimit = TimeSpan.FromSeconds(Math.Max(10, ticket.Spec.InactivityTimeout));
            if (ticket.DetachPoolIfIdle(idleLimit) is { } pool)
            {
                TrackClosing(ClosePoolAsync(ticket, pool, flush: true));
            }
        }
    }

    /// <summary>Shutdown: cancel what still runs, flush and close every pool.</summary>
    public async ValueTask DisposeAsync()
    {
        var closing = new List<Task>();
        foreach (var (id, ticket) in _tickets)
        {
            _tickets.TryRemove(id, out _);
            closing.Add(CancelAndCloseAsync(ticket));
        }
        lock (_closing)
        {
            closing.AddRange(_closing);
        }
        await Task.WhenAll(closing);
        SplicePipes.Dispose();
    }

    private async Task RetireAsync(Ticket ticket)
    {
        // Let the replaced ticket's operations finish; they still hold its pool.
        while (ticket.IsActive)
        {
            await Task.Delay(TimeSpan.FromMilliseconds(100), _time);
        }
        await ClosePoolAsync(ticket, ticket.DetachPool(), flush: true);
    }

    private async Task CancelAndCloseAsync(Ticket ticket)
    {
        await ticket.CancelAsync(RemoveTimeout, CancellationToken.None);
        await ClosePoolAsync(ticket, ticket.DetachPool(), flush: true);
    }

    private async Task ClosePoolAsync(Ticket ticket, Task<NbdPool>? poolTask, bool flush)
    {
        if (poolTask is null)
        {
            return;
        }
        try
        {
            var pool = await poolTask;
            try
            {
                if (flush && pool.Export.CanFlush && !pool.Export.IsReadOnly)
                {
                    using var timeout = new CancellationTokenSource(RemoveTimeout, _time);
                    await pool.FlushAsync(timeout.Token);
                }
            }
            finally
            {
                await pool.DisposeAsync();
            }
            LogPoolClosed(ticket.Spec.TransferId);
        }
        catch (Exception e)
        {
            LogPoolCloseFailed(ticket.Spec.TransferId, e);
        }
    }

    private void TrackClosing(Task task)
    {
        lock (_closing)
        {
            _closing.RemoveAll(t => t.IsCompleted);
            _closing.Add(task);
        }
    }

    /// <summary>A dirty ticket also asks for the export's dirty bitmap: "qemu:dirty-bitmap:" is a namespace
    /// query that NbdClient expands with LIST_META_CONTEXT, as imageio does (imageio-api.md §6.2).</summary>
    private async Task<NbdPool> ConnectAsync(NbdEndpoint endpoint, bool dirty, CancellationToken cancellationToken)
    {
        var options = dirty
            ? _poolOptions with { Connection = _poolOptions.Connection with { MetaContexts = [.. _poolOptions.Connection.MetaContexts, NbdMetaContexts.DirtyBitmapPrefix] } }
            : _poolOptions;
        return await NbdPool.ConnectAsync(endpoint, options, cancellationToken);
    }

    [LoggerMessage(EventId = 1001, Level = LogLevel.Information, Message = "Added transfer {TransferId}: size={Size} ops={Ops} timeout={Timeout} inactivity_timeout={InactivityTimeout} sparse={Sparse} dirty={Dirty}")]
    private partial void LogTicketAdded(string transferId, long size, string ops, long timeout, long inactivityTimeout, bool sparse, bool dirty);

    [LoggerMessage(EventId = 1002, Level = LogLevel.Information, Message = "Removing transfer {TransferId}")]
    private partial void LogTicketRemoving(string transferId);

    [LoggerMessage(EventId = 1003, Level = LogLevel.Information, Message = "Removed transfer {TransferId}")]
    private partial void LogTicketRemoved(string transferId);

    [LoggerMessage(EventId = 1004, Level = LogLevel.Warning, Message = "Transfer {TransferId} still busy after {Timeout} s; not removed")]
    private partial void LogTicketBusy(string transferId, int timeout);

    [LoggerMessage(EventId = 1005, Level = LogLevel.Information, Message = "Removed all tickets")]
    private partial void LogTicketsCleared();

    [LoggerMessage(EventId = 1006, Level = LogLevel.Debug, Message = "Closed the NBD pool of transfer {TransferId}")]
    private partial void LogPoolClosed(string transferId);

    [LoggerMessage(EventId = 1007, Level = LogLevel.Warning, Message = "Flushing or closing the NBD pool of transfer {TransferId} failed")]
    private partial void LogPoolCloseFailed(string transferId, Exception exception);
}

/// <summary>What a request needs from its ticket.</summary>
public enum TicketOp
{
    /// <summary>GET, HEAD, OPTIONS, extents, checksum: "read" or "write" in ops.</summary>
    Read,
    /// <summary>PUT and PATCH: "write" in ops.</summary>
    Write,
}
