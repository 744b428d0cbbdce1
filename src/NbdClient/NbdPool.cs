using System.Diagnostics;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using NbdClient.Internal;
using NbdClient.Protocol;
using Polly;
using Polly.CircuitBreaker;
using Polly.Retry;

namespace NbdClient;

/// <summary>A pool of pipelined connections to one export. One connection, or up to
/// <see cref="NbdPoolOptions.MaxConnections"/> when the export advertises CAN_MULTI_CONN (libnbd's
/// documented pattern: open one, check the flag, then open more). Requests go to the least-loaded
/// live connection; dead connections are replaced on next use, with back-off. Overlapping write-like
/// requests are serialised in submission order, since overlapping writes in flight may corrupt data
/// (libnbd docs, nbd-client-spec.md §8).</summary>
public sealed class NbdPool : IAsyncDisposable
{
    /// <summary>Size of the WRITE_ZEROES/TRIM requests a large range is cut into, so they spread over the pool.</summary>
    private const long ZeroStep = 256L * 1024 * 1024;

    private readonly NbdEndpoint _endpoint;
    private readonly NbdPoolOptions _options;
    private readonly ILogger _logger;
    private readonly ResiliencePipeline _reconnectPipeline;
    private readonly Lock _lock = new();
    private readonly List<NbdConnection> _connections = [];
    private readonly WriteTracker _writes = new();
    private readonly LinkedList<WriteRange> _activeWrites = new();
    private readonly int _target;
    private Task<NbdConnection>? _reconnecting;
    private Exception? _lostUnflushedWrites;
    private bool _disposed;

    private sealed class WriteRange(long offset, long end)
    {
        public long Offset { get; } = offset;
        public long End { get; } = end;
        public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private NbdPool(NbdEndpoint endpoint, NbdPoolOptions options, NbdConnection first)
    {
        _endpoint = endpoint;
        _options = options;
        _logger = (options.Connection.LoggerFactory ?? NullLoggerFactory.Instance).CreateLogger<NbdPool>();
        Export = first.Export;
        _target = Export.CanMultiConn ? Math.Max(1, options.MaxConnections) : 1;
        _connections.Add(first);

        // Retry outside, circuit breaker inside: the breaker counts single connection attempts, and
        // once it is open the retry is not tried again (BrokenCircuitException is not handled), so a dead
        // server fails requests at once instead of making each wait for a whole back-off sequence
        // (ecosystem.md §4.4: "circuit breaker per qemu-nbd socket").
        var builder = new ResiliencePipelineBuilder { TimeProvider = options.Connection.TimeProvider };
        if (options.ReconnectAttempts > 1)
        {
            builder.AddRetry(new RetryStrategyOptions
            {
                MaxRetryAttempts = options.ReconnectAttempts - 1,
                Delay = options.ReconnectDelay,
                MaxDelay = options.ReconnectMaxDelay,
                BackoffType = DelayBackoffType.Exponential,
                UseJitter = true,
                ShouldHandle = new PredicateBuilder()
                    .Handle<NbdConnectionException>(IsTransient)
                    .Handle<SocketException>()
                    .Handle<IOException>(ex => ex is not NbdException),
                OnRetry = args =>
                {
                    Log.ReconnectFailed(_logger, _endpoint.ToString(), args.AttemptNumber + 1, args.Outcome.Exception?.Message ?? "?");
                    return default;
                },
            });
        }
        if (options.BreakerFailureThreshold > 0)
        {
            builder.AddCircuitBreaker(new CircuitBreakerStrategyOptions
            {
                // Open only when every attempt in the window failed, and at least the threshold did:
                // one good connection in between keeps the circuit closed.
                FailureRatio = 1.0,
                MinimumThroughput = Math.Max(2, options.BreakerFailureThreshold),
                SamplingDuration = options.BreakerSamplingDuration,
                BreakDuration = options.BreakerBreakDuration,
                ShouldHandle = new PredicateBuilder()
                    .Handle<NbdConnectionException>(IsTransient)
                    .Handle<SocketException>()
                    .Handle<IOException>(ex => ex is not NbdException),
                OnOpened = args =>
                {
                    Log.CircuitOpened(_logger, _endpoint.ToString(), args.BreakDuration.TotalSeconds, args.Outcome.Exception?.Message ?? "?");
                    return default;
                },
                OnClosed = _ =>
                {
                    Log.CircuitClosed(_logger, _endpoint.ToString());
                    return default;
                },
            });
        }
        _reconnectPipeline = builder.Build();
    }

    /// <summary>Failures worth retrying: the server may be restarting. A missing export, a TLS problem
    /// or a refusal will not fix itself.</summary>
    private static bool IsTransient(NbdConnectionException ex) => ex.Reason is
        NbdConnectionFailure.ConnectFailed or NbdConnectionFailure.ConnectionClosed or NbdConnectionFailure.IOError
        or NbdConnectionFailure.HandshakeTimeout or NbdConnectionFailure.ServerShutdown;

    public static async Task<NbdPool> ConnectAsync(NbdEndpoint endpoint, NbdPoolOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        options ??= new NbdPoolOptions();
        var first = await NbdConnection.ConnectAsync(endpoint, options.Connection, cancellationToken).ConfigureAwait(false);
        var pool = new NbdPool(endpoint, options, first);
        if (pool._target > 1)
        {
            var more = Enumerable.Range(1, pool._target - 1)
                .Select(_ => NbdConnection.ConnectAsync(endpoint, options.Connection, cancellationToken))
                .ToList();
            foreach (var task in more)
            {
                try
                {
                    var connection = await task.ConfigureAwait(false);
                    lock (pool._lock)
                        pool._connections.Add(connection);
                }
                catch (NbdConnectionException ex)
                {
                    // Fewer connections is fine; the pool tops itself up on later use.
                    Log.ReconnectFailed(pool._logger, endpoint.ToString(), 1, ex.Message);
                }
            }
        }
        Log.PoolOpened(pool._logger, endpoint.ToString(), pool.ConnectionCount, pool.Export.CanMultiConn);
        return pool;
    }

    /// <summary>The export as the first connection saw it.</summary>
    public NbdExportInfo Export { get; }

    /// <summary>Live connections.</summary>
    public int ConnectionCount
    {
        get
        {
            lock (_lock)
                return _connections.Count(c => !c.IsClosed);
        }
    }

    /// <summary>Requests in flight over all connections.</summary>
    public int InFlight
    {
        get
        {
            lock (_lock)
                return _connections.Sum(c => c.InFlight);
        }
    }

    /// <summary>The largest read or write sent as one request: the export's maximum payload, or
    /// <see cref="NbdPoolOptions.MaxRequestSize"/> when smaller.</summary>
    public int MaxRequestLength => RequestLimit;

    private int RequestLimit => _options.MaxRequestSize > 0 ? Math.Min(_options.MaxRequestSize, Export.MaximumPayload) : Export.MaximumPayload;

    private int PipeRequestLimit => _options.MaxPipeRequestSize > 0 ? Math.Min(_options.MaxPipeRequestSize, Export.MaximumPayload) : RequestLimit;

    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        CheckRange(offset, buffer.Length);
        var max = RequestLimit;
        if (buffer.Length <= max)
        {
            await ReadPartAsync(offset, buffer, cancellationToken).ConfigureAwait(false);
            return;
        }
        // Parts back to back on one connection, the caller waiting for the group (as for writes).
        var connection = await GetConnectionAsync(cancellationToken).ConfigureAwait(false);
        await connection.SubmitReadPartsForPool(offset, buffer, max, cancellationToken).ConfigureAwait(false);
    }

    private async Task ReadPartAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var connection = await GetConnectionAsync(cancellationToken).ConfigureAwait(false);
        await connection.ReadAsync(offset, buffer, cancellationToken).ConfigureAwait(false);
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, NbdCommandFlags flags = NbdCommandFlags.None, CancellationToken cancellationToken = default)
    {
        if (RangeError(offset, data.Length) is { } refused)
            return ValueTask.FromException(refused);
        return data.Length == 0 ? default : new ValueTask(WriteLikeAsync(NbdCommand.Write, flags, offset, data, data.Length, cancellationToken));
    }

    /// <summary>Writes everything <paramref name="source"/> holds at <paramref name="offset"/>, sent from the pipe
    /// by splice(2) on connections with <see cref="NbdClientOptions.ZeroCopyWrites"/> (read out and sent on
    /// others): one request, or requests of <see cref="NbdPoolOptions.MaxPipeRequestSize"/> (else
    /// <see cref="MaxRequestLength"/>) sent in order on one connection.
    /// When the task completes the pipe is empty if the write was sent; after a failure it may still hold
    /// part of the payload, which cannot be sent again: the caller should dispose of it.</summary>
    public ValueTask WriteAsync(long offset, SplicePipe source, NbdCommandFlags flags = NbdCommandFlags.None, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        var length = source.Length;
        if (RangeError(offset, length) is { } refused)
            return ValueTask.FromException(refused);
        return length == 0 ? default : new ValueTask(WriteLikeAsync(NbdCommand.Write, flags, offset, default, length, cancellationToken, source));
    }

    public ValueTask WriteZeroesAsync(long offset, long length, NbdCommandFlags flags = NbdCommandFlags.None, CancellationToken cancellationToken = default)
        => PayloadlessAsync(NbdCommand.WriteZeroes, flags, offset, length, cancellationToken);

    public ValueTask TrimAsync(long offset, long length, NbdCommandFlags flags = NbdCommandFlags.None, CancellationToken cancellationToken = default)
        => PayloadlessAsync(NbdCommand.Trim, flags, offset, length, cancellationToken);

    private async ValueTask PayloadlessAsync(NbdCommand command, NbdCommandFlags flags, long offset, long length, CancellationToken cancellationToken)
    {
        CheckRange(offset, length);
        if (length == 0)
            return;
        using var activity = command == NbdCommand.WriteZeroes ? NbdTelemetry.ActivitySource.StartActivity("nbd.write_zeroes") : null;
        activity?.SetTag("nbd.length", length);
        var step = ZeroStep - (ZeroStep % Export.MinimumBlockSize);
        var parts = new List<Task>();
        for (var at = 0L; at < length; at += step)
            parts.Add(WriteLikeAsync(command, flags, offset + at, default, Math.Min(step, length - at), cancellationToken));
        await Tasks.WhenAllInOrderAsync(parts).ConfigureAwait(false);
    }

    /// <summary>One write-like request: numbered for the flush barrier, ordered after overlapping
    /// earlier writes, sent to the least-loaded connection. A WRITE larger than the request limit goes as
    /// several requests on that connection, with one range and one number for all of them.</summary>
    private async Task WriteLikeAsync(NbdCommand command, NbdCommandFlags flags, long offset, ReadOnlyMemory<byte> payload, long length,
        CancellationToken cancellationToken, SplicePipe? source = null)
    {
        var sequence = _writes.Begin();
        var range = new WriteRange(offset, offset + length);
        List<Task>? earlier = null;
        lock (_activeWrites)
        {
            foreach (var active in _activeWrites)
            {
                if (active.Offset < range.End && range.Offset < active.End)
                    (earlier ??= []).Add(active.Done.Task);
            }
            _activeWrites.AddLast(range);
        }

        Task caller;
        try
        {
            if (earlier is not null)
                await Task.WhenAll(earlier).WaitAsync(cancellationToken).ConfigureAwait(false);
            var connection = await GetConnectionAsync(cancellationToken).ConfigureAwait(false);
            // The range and the barrier are released when the request is really over, not when the caller
            // stops waiting; inline, before the caller is released (EndWrite only takes a short lock).
            Action<Exception?> settled = error => EndWrite(range, sequence, error);
            var limit = source is null ? RequestLimit : PipeRequestLimit;
            caller = command == NbdCommand.Write && length > limit
                ? connection.SubmitPartsForPool(command, flags, offset, payload, source, length, limit, settled, cancellationToken)
                : connection.SubmitForPool(command, flags, offset, payload, source, length, settled, cancellationToken);
        }
        catch
        {
            // Nothing reached the server, so nothing for a flush to wait for or fail on: the caller gets the error.
            EndWrite(range, sequence, null);
            throw;
        }
        await caller.ConfigureAwait(false);
    }

    private void EndWrite(WriteRange range, long sequence, Exception? error)
    {
        lock (_activeWrites)
            _activeWrites.Remove(range);
        range.Done.TrySetResult();
        _writes.End(sequence, error);
    }

    public async ValueTask<IReadOnlyList<NbdExtent>> GetExtentsAsync(long offset, long length, string context = NbdMetaContexts.BaseAllocation, CancellationToken cancellationToken = default)
    {
        var connection = await GetConnectionAsync(cancellationToken).ConfigureAwait(false);
        return await connection.GetExtentsAsync(offset, length, context, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The flush barrier: waits for every write-like request submitted before the call (on every
    /// connection) to be acknowledged, then sends NBD_CMD_FLUSH to one connection when the export has
    /// CAN_MULTI_CONN, else to every connection that wrote since its last flush. Throws if a covered write
    /// failed, or if a connection holding acknowledged but unflushed writes was lost.</summary>
    public async ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        if (!Export.CanFlush)
            throw new NbdRequestRefusedException("Flush refused: the export does not support flush");
        using var activity = NbdTelemetry.ActivitySource.StartActivity("nbd.flush");
        try
        {
            // 1. "MUST NOT issue an NBD_CMD_FLUSH until it has received the reply for all write commands
            //    which it expects to be covered by the flush" (proto.md). Later writes are not waited for.
            await _writes.WaitForOutstandingAsync(cancellationToken).ConfigureAwait(false);

            // 2. The flush itself.
            if (Export.CanMultiConn)
            {
                // One flush covers every connection's acknowledged writes (CAN_MULTI_CONN).
                var connection = await GetConnectionAsync(cancellationToken).ConfigureAwait(false);
                List<(NbdConnection Connection, long Generation)> covered;
                lock (_lock)
                    covered = [.. _connections.Select(c => (c, c.WritesAcknowledged))];
                await connection.FlushAsync(cancellationToken).ConfigureAwait(false);
                foreach (var (other, generation) in covered)
                    other.MarkFlushed(generation);
            }
            else
            {
                List<NbdConnection> dirty;
                lock (_lock)
                    dirty = [.. _connections.Where(c => c.IsDirty && !c.IsClosed)];
                if (dirty.Count == 0)
                    dirty.Add(await GetConnectionAsync(cancellationToken).ConfigureAwait(false));
                await Task.WhenAll(dirty.Select(c => c.FlushAsync(cancellationToken).AsTask())).ConfigureAwait(false);
            }

            // 3. Writes acknowledged on a connection that died before this flush may not be durable:
            //    report it once, so the client resends what it wrote since its last flush.
            Exception? lost;
            lock (_lock)
            {
                PruneDeadConnections();
                lost = _lostUnflushedWrites;
                _lostUnflushedWrites = null;
            }
            if (lost is not null)
                throw new NbdException($"flush failed: a connection holding acknowledged but unflushed writes was lost ({lost.Message}); data written since the last flush may be lost", lost);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            activity?.SetStatus(ActivityStatusCode.Error, ex.Message);
            throw;
        }
    }

    /// <summary>Waits for every write-like request submitted before the call to be acknowledged.</summary>
    public ValueTask DrainAsync(CancellationToken cancellationToken = default)
        => new(_writes.WaitForOutstandingAsync(cancellationToken));

    private void CheckRange(long offset, long length)
    {
        if (RangeError(offset, length) is { } refused)
            throw refused;
    }

    private Exception? RangeError(long offset, long length)
    {
        if (_disposed)
            return new ObjectDisposedException(nameof(NbdPool));
        if (offset < 0 || length < 0 || length > Export.Size || offset > Export.Size - length)
            return new NbdRequestRefusedException($"offset={offset} length={length} is outside the export (size {Export.Size})");
        return null;
    }

    /// <summary>Removes dead connections; remembers when one died holding unflushed writes. Call under _lock.</summary>
    private void PruneDeadConnections()
    {
        for (var i = _connections.Count - 1; i >= 0; i--)
        {
            var connection = _connections[i];
            if (!connection.IsClosed)
                continue;
            if (connection.IsDirty && !_disposed)
            {
                var reason = connection.Completion.IsCompleted ? connection.Completion.Result : null;
                _lostUnflushedWrites ??= reason ?? new NbdException("connection closed");
            }
            _connections.RemoveAt(i);
            _ = connection.DisposeAsync().AsTask();
        }
    }

    private ValueTask<NbdConnection> GetConnectionAsync(CancellationToken cancellationToken)
    {
        Task<NbdConnection>? reconnecting;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            PruneDeadConnections();
            NbdConnection? best = null;
            var bestLoad = int.MaxValue;
            foreach (var connection in _connections)
            {
                var load = connection.InFlight;
                if (load < bestLoad)
                {
                    best = connection;
                    bestLoad = load;
                }
            }
            if (_connections.Count < _target && _reconnecting is null)
                _reconnecting = ReconnectAsync();
            if (best is not null)
                return new ValueTask<NbdConnection>(best);
            reconnecting = _reconnecting!;
        }
        return new ValueTask<NbdConnection>(reconnecting.WaitAsync(cancellationToken));
    }

    private async Task<NbdConnection> ReconnectAsync()
    {
        await Task.Yield(); // never run the connect inline under the caller's lock
        try
        {
            NbdConnection connection;
            try
            {
                connection = await _reconnectPipeline.ExecuteAsync(
                    async token => await NbdConnection.ConnectAsync(_endpoint, _options.Connection, token).ConfigureAwait(false),
                    CancellationToken.None).ConfigureAwait(false);
            }
            catch (BrokenCircuitException ex)
            {
                // Callers see an NbdConnectionException, never a Polly type.
                var retryAfter = ex.RetryAfter ?? _options.BreakerBreakDuration;
                throw new NbdConnectionException(NbdConnectionFailure.CircuitOpen, NbdPhase.Connect,
                    $"every recent connection attempt to {_endpoint} failed; not trying again for {Math.Ceiling(retryAfter.TotalSeconds):0} s (circuit open)", ex)
                {
                    RetryAfter = retryAfter,
                };
            }
            if (connection.Export.Size != Export.Size)
            {
                await connection.DisposeAsync().ConfigureAwait(false);
                throw new NbdConnectionException(NbdConnectionFailure.Refused, NbdPhase.Handshake,
                    $"the export changed size from {Export.Size} to {connection.Export.Size} across a reconnect");
            }
            NbdTelemetry.Reconnects.Add(1);
            Log.Reconnected(_logger, _endpoint.ToString());
            lock (_lock)
            {
                if (_disposed)
                {
                    _ = connection.DisposeAsync().AsTask();
                    throw new ObjectDisposedException(nameof(NbdPool));
                }
                _connections.Add(connection);
            }
            return connection;
        }
        finally
        {
            lock (_lock)
                _reconnecting = null;
        }
    }

    /// <summary>Waits (bounded) for writes in flight, then disconnects every connection. Does not flush:
    /// call <see cref="FlushAsync"/> first when the data must be durable.</summary>
    public async ValueTask DisposeAsync()
    {
        List<NbdConnection> connections;
        lock (_lock)
        {
            if (_disposed)
                return;
            _disposed = true;
            connections = [.. _connections];
            _connections.Clear();
        }
        try
        {
            await _writes.WaitForOutstandingAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is TimeoutException or NbdException)
        {
            // Failed or stuck writes are reported to their callers; closing goes on.
        }
        await Task.WhenAll(connections.Select(c => c.DisposeAsync().AsTask())).ConfigureAwait(false);
    }
}
