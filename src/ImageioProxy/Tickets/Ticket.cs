using System.Text.Json;
using ImageioProxy.DataPath;
using ImageioProxy.Hosting;
using ImageioProxy.Http;
using NbdClient;

namespace ImageioProxy.Tickets;

/// <summary>An installed ticket and its runtime state: expiry, ongoing operations, the HTTP connections
/// that use it, transferred bytes, and the NBD pool shared by all of them (imageio _internal/auth.py).</summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "The token source has no timer; requests may still hold its token after removal, so it is never disposed.")]
public sealed class Ticket
{
    private readonly TimeProvider _time;
    private readonly Func<NbdEndpoint, CancellationToken, Task<NbdPool>> _connect;
    private readonly Lock _lock = new();
    private readonly CancellationTokenSource _cancellation = new();
    private readonly HashSet<TicketOperation> _ongoing = [];
    private readonly HashSet<ClientConnection> _connections = [];
    private readonly RangeSet _completed = new();
    private readonly TaskCompletionSource _unused = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _expires;    // monotonic timestamp (TimeProvider.GetTimestamp units)
    private long _lastAccess; // monotonic timestamp of the last touch
    private bool _canceled;
    private Task<NbdPool>? _pool;

    public Ticket(TicketSpec spec, TimeProvider time, ByteBudget budget, Func<NbdEndpoint, CancellationToken, Task<NbdPool>> connect)
    {
        Spec = spec;
        _time = time;
        _connect = connect;
        Budget = budget;
        _lastAccess = time.GetTimestamp();
        _expires = _lastAccess + Seconds(spec.Timeout);
    }

    public TicketSpec Spec { get; }

    /// <summary>In-flight bytes of this ticket's NBD reads and writes.</summary>
    public ByteBudget Budget { get; }

    /// <summary>Canceled when the ticket is removed: ongoing operations stop and answer 403.</summary>
    public CancellationToken Canceled => _cancellation.Token;

    public bool IsCanceled
    {
        get { lock (_lock) { return _canceled; } }
    }

    /// <summary>True while an operation runs (status "active").</summary>
    public bool IsActive
    {
        get { lock (_lock) { return _ongoing.Count > 0; } }
    }

    public int ConnectionCount
    {
        get { lock (_lock) { return _connections.Count; } }
    }

    public bool IsExpired => _time.GetTimestamp() >= Volatile.Read(ref _expires);

    /// <summary>Renews the expiry after activity. Unlike imageio, which resets the expiry to now+timeout
    /// and so undoes a longer PATCH extension, a touch never shortens the expiry (imageio-api.md §5.2).</summary>
    public void Touch()
    {
        lock (_lock)
        {
            var now = _time.GetTimestamp();
            _expires = Math.Max(_expires, now + Seconds(Spec.Timeout));
            _lastAccess = now;
        }
    }

    /// <summary>PATCH /tickets/{id}: expires = now + timeout (it may also shorten it).</summary>
    public void Extend(long timeout)
    {
        lock (_lock)
        {
            _expires = _time.GetTimestamp() + Seconds(timeout);
        }
    }

    /// <summary>Seconds since the last activity, 0 while active.</summary>
    public TimeSpan IdleTime
    {
        get
        {
            lock (_lock)
            {
                return _ongoing.Count > 0 ? TimeSpan.Zero : _time.GetElapsedTime(_lastAccess);
            }
        }
    }

    /// <summary>Registers an operation; 403 once the ticket is canceled.</summary>
    public TicketOperation BeginOperation(long offset)
    {
        lock (_lock)
        {
            if (_canceled)
            {
                throw CanceledError();
            }
            var operation = new TicketOperation(this, offset);
            _ongoing.Add(operation);
            return operation;
        }
    }

    internal void EndOperation(TicketOperation operation)
    {
        lock (_lock)
        {
            if (!_ongoing.Remove(operation))
            {
                return;
            }
            if (_canceled)
            {
                if (_ongoing.Count == 0)
                {
                    _unused.TrySetResult();
                }
                return;
            }
            // imageio reports transferred bytes only for single-op tickets.
            if (Spec.Ops.Count == 1)
            {
                _completed.Add(operation.Offset, operation.Offset + operation.Done);
            }
        }
        Touch();
    }

    public HttpErrorException CanceledError() => HttpErrorException.Forbidden($"Transfer {Spec.TransferId} was canceled");

    /// <summary>Binds an HTTP connection to this ticket; it then counts in "connections" and obeys the
    /// ticket's inactivity timeout. The number of connections is limited (imageio only advertises it).</summary>
    public void AddConnection(ClientConnection connection, int maxConnections)
    {
        lock (_lock)
        {
            if (_canceled)
            {
                throw CanceledError();
            }
            if (_connections.Contains(connection))
            {
                return;
            }
            if (_connections.Count >= maxConnections)
            {
                throw new HttpErrorException(StatusCodes.Status503ServiceUnavailable,
                    $"Too many connections for transfer {Spec.TransferId}: the limit is {maxConnections}", closeConnection: true);
            }
            _connections.Add(connection);
        }
    }

    public void RemoveConnection(ClientConnection connection)
    {
        lock (_lock)
        {
            _connections.Remove(connection);
        }
    }

    /// <summary>The ticket's NBD pool, opened on first use and shared by every connection of the ticket.</summary>
    public async ValueTask<NbdPool> GetPoolAsync(CancellationToken cancellationToken)
    {
        Task<NbdPool> pool;
        lock (_lock)
        {
            if (_canceled)
            {
                throw CanceledError();
            }
            if (_pool is null || _pool.IsFaulted || _pool.IsCanceled)
            {
                // Not tied to the request: the pool outlives it and serves every connection of the ticket.
                _pool = _connect(Spec.Endpoint, CancellationToken.None);
            }
            pool = _pool;
        }
        return await pool.WaitAsync(cancellationToken);
    }

    /// <summary>Detaches the pool when nothing uses the ticket and it has been idle for
    /// <paramref name="idleLimit"/>; the caller flushes and closes it.</summary>
    internal Task<NbdPool>? DetachPoolIfIdle(TimeSpan idleLimit)
    {
        lock (_lock)
        {
            if (_pool is null || _ongoing.Count > 0 || _connections.Count > 0 || _time.GetElapsedTime(_lastAccess) < idleLimit)
            {
                return null;
            }
            var pool = _pool;
            _pool = null;
            return pool;
        }
    }

    internal Task<NbdPool>? DetachPool()
    {
        lock (_lock)
        {
            var pool = _pool;
            _pool = null;
            return pool;
        }
    }

    /// <summary>Cancels the ticket: new operations fail with 403, ongoing ones are canceled. Returns
    /// false when they did not finish within <paramref name="timeout"/> (imageio-api.md §5.5).</summary>
    public async Task<bool> CancelAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            _canceled = true;
            if (_ongoing.Count == 0)
            {
                _unused.TrySetResult();
            }
        }
        await _cancellation.CancelAsync();
        try
        {
            await _unused.Task.WaitAsync(timeout, _time, cancellationToken);
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
    }

    /// <summary>The status JSON of GET /tickets/{id} (imageio-api.md §5.6). "expires" is a wall-clock
    /// Unix time in seconds instead of imageio's meaningless monotonic value.</summary>
    public void WriteStatus(Utf8JsonWriter writer)
    {
        bool active;
        bool canceled;
        int connections;
        long expiresIn;
        long? transferred = null;
        lock (_lock)
        {
            active = _ongoing.Count > 0;
            canceled = _canceled;
            connections = _connections.Count;
            expiresIn = _expires - _time.GetTimestamp();
            if (Spec.Ops.Count == 1)
            {
                var all = new RangeSet(_completed);
                foreach (var operation in _ongoing)
                {
                    all.Add(operation.Offset, operation.Offset + operation.Done);
                }
                transferred = all.Sum();
            }
        }
        var expires = _time.GetUtcNow().ToUnixTimeSeconds() + (long)Math.Ceiling(expiresIn / (double)_time.TimestampFrequency);

        writer.WriteStartObject();
        writer.WriteBoolean("active", active);
        writer.WriteBoolean("canceled", canceled);
        writer.WriteNumber("connections", connections);
        writer.WriteNumber("expires", expires);
        writer.WriteNumber("idle_time", (long)IdleTime.TotalSeconds);
        writer.WriteNumber("inactivity_timeout", Spec.InactivityTimeout);
        writer.WriteStartArray("ops");
        foreach (var op in Spec.Ops)
        {
            writer.WriteStringValue(op);
        }
        writer.WriteEndArray();
        writer.WriteNumber("size", Spec.Size);
        writer.WriteBoolean("sparse", Spec.Sparse);
        writer.WriteBoolean("dirty", Spec.Dirty);
        writer.WriteNumber("timeout", Spec.Timeout);
        writer.WriteString("url", Spec.Url);
        writer.WriteString("uuid", Spec.Uuid);
        writer.WriteString("transfer_id", Spec.TransferId);
        if (Spec.Filename is not null)
        {
            writer.WriteString("filename", Spec.Filename);
        }
        if (transferred is long bytes)
        {
            writer.WriteNumber("transferred", bytes);
        }
        writer.WriteEndObject();
    }

    private long Seconds(long seconds)
    {
        // Saturate instead of overflowing for absurd timeouts.
        var frequency = _time.TimestampFrequency;
        return seconds > long.MaxValue / 4 / frequency ? long.MaxValue / 4 : seconds * frequency;
    }
}

/// <summary>One running data operation of a ticket; Done feeds "transferred".</summary>
public sealed class TicketOperation : IDisposable
{
    private readonly Ticket _ticket;
    private long _done;

    internal TicketOperation(Ticket ticket, long offset)
    {
        _ticket = ticket;
        Offset = offset;
    }

    public long Offset { get; }

    public long Done => Interlocked.Read(ref _done);

    public void AddDone(long bytes) => Interlocked.Add(ref _done, bytes);

    public void Dispose() => _ticket.EndOperation(this);
}
