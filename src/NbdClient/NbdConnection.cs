using System.Buffers;
using System.Diagnostics;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using NbdClient.Internal;
using NbdClient.Protocol;

namespace NbdClient;

/// <summary>One NBD connection in the transmission phase: many requests in flight, replies matched
/// by cookie in any order. One writer loop and one reader loop. Thread-safe. Fails once, failing
/// everyone pending.</summary>
public sealed partial class NbdConnection : IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly Stream _stream;
    private readonly NbdReadBuffer _reader;
    private readonly NbdExportInfo _export;
    private readonly NbdClientOptions _options;
    private readonly string _endpointText;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    // Synchronous continuations: when the writer loop is idle, the submitting thread runs it and sends the
    // request itself instead of waking a thread-pool worker (GET 1.2x faster, 17 % less CPU per small PUT,
    // docs/benchmarks.md). Still one writer at a time: a busy writer is not waiting on the channel.
    // TryWrite is never called under _lock, so running the writer inline cannot deadlock on it.
    private readonly Channel<NbdRequest> _sendQueue = Channel.CreateUnbounded<NbdRequest>(new UnboundedChannelOptions { SingleReader = true, AllowSynchronousContinuations = true });
    private readonly SemaphoreSlim _slots;
    private readonly Lock _lock = new();
    private readonly Dictionary<ulong, NbdRequest> _pending = [];
    private readonly WriteTracker _writes = new();
    private readonly TaskCompletionSource<Exception> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly ITimer? _timeoutTimer;
    private readonly SpliceSender? _splice;
    // Pins of zero-copy payloads whose connection died before the server answered (ReleaseStrandedAsync).
    private readonly List<MemoryHandle> _stranded = [];
    private readonly Task _writeLoop;
    private readonly Task _readLoop;
    private ulong _nextCookie;
    private Exception? _failure;
    private NbdConnectionException? _closing;
    private long _writesAcknowledged;
    private long _flushedThrough;

    private NbdConnection(Socket socket, NbdHandshake.Result handshake, NbdClientOptions options, NbdEndpoint endpoint)
    {
        _socket = socket;
        _stream = handshake.Stream;
        _reader = handshake.Reader;
        _export = handshake.Export;
        _options = options;
        _time = options.TimeProvider;
        _endpointText = endpoint.ToString();
        _logger = (options.LoggerFactory ?? NullLoggerFactory.Instance).CreateLogger<NbdConnection>();
        _slots = new SemaphoreSlim(Math.Max(1, options.MaxInFlight));
        // Only a plain socket can take spliced pages; TLS encrypts into its own buffers anyway.
        if (options.ZeroCopyWrites && _stream is NetworkStream)
            _splice = SpliceSender.TryCreate(socket);
        NbdTelemetry.Connections.Add(1);

        // Loops run without the caller's execution context (no ambient Activity or AsyncLocal leaks).
        using (ExecutionContext.SuppressFlow())
        {
            _writeLoop = Task.Run(WriteLoopAsync);
            _readLoop = Task.Run(ReadLoopAsync);
            if (options.RequestTimeout != Timeout.InfiniteTimeSpan)
            {
                var period = TimeSpan.FromTicks(Math.Max(TimeSpan.TicksPerMillisecond * 50, options.RequestTimeout.Ticks / 4));
                _timeoutTimer = _time.CreateTimer(static state => ((NbdConnection)state!).CheckRequestTimeout(), this, period, period);
            }
        }
    }

    /// <summary>Connects, runs the handshake and returns a connection ready for requests.</summary>
    public static async Task<NbdConnection> ConnectAsync(NbdEndpoint endpoint, NbdClientOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        options ??= new NbdClientOptions();
        using var activity = NbdTelemetry.ActivitySource.StartActivity("nbd.connect", ActivityKind.Client);
        var socket = endpoint.Address is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(SocketType.Stream, ProtocolType.Tcp);
        Stream? stream = null;
        try
        {
            if (options.SocketBufferSize > 0)
            {
                socket.SendBufferSize = options.SocketBufferSize;
                socket.ReceiveBufferSize = options.SocketBufferSize;
            }
            using (var timeout = new CancellationTokenSource(options.ConnectTimeout, options.TimeProvider))
            using (var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token))
            {
                try
                {
                    await socket.ConnectAsync(endpoint.Address, linked.Token).ConfigureAwait(false);
                }
                catch (SocketException ex)
                {
                    throw new NbdConnectionException(NbdConnectionFailure.ConnectFailed, NbdPhase.Connect, $"cannot connect to {endpoint}: {ex.Message}", ex);
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    throw new NbdConnectionException(NbdConnectionFailure.ConnectFailed, NbdPhase.Connect, $"connecting to {endpoint} timed out after {options.ConnectTimeout.TotalSeconds:0.#} s");
                }
            }
            if (socket.AddressFamily != AddressFamily.Unix)
                socket.NoDelay = true; // the spec says both sides SHOULD disable Nagle

            stream = new NetworkStream(socket, ownsSocket: true);
            NbdHandshake.Result handshake;
            using (var timeout = new CancellationTokenSource(options.HandshakeTimeout, options.TimeProvider))
            using (var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token))
            {
                try
                {
                    handshake = await NbdHandshake.RunAsync(stream, endpoint, options, linked.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    throw new NbdConnectionException(NbdConnectionFailure.HandshakeTimeout, NbdPhase.Handshake,
                        $"no handshake with {endpoint} after {options.HandshakeTimeout.TotalSeconds:0.#} s (a qemu-nbd started with --shared=1 blocks a second client until the first leaves)");
                }
                catch (Exception ex) when (ex is IOException or SocketException && ex is not NbdException)
                {
                    throw new NbdConnectionException(NbdConnectionFailure.IOError, NbdPhase.Handshake, $"I/O error during the handshake with {endpoint}: {ex.Message}", ex);
                }
            }
            stream = handshake.Stream;
            var connection = new NbdConnection(socket, handshake, options, endpoint);
            if (connection._logger.IsEnabled(LogLevel.Debug))
                Log.Connected(connection._logger, connection._endpointText, handshake.Export.Size, (ushort)handshake.Export.Flags,
                    handshake.Export.StructuredReplies, string.Join(",", handshake.Export.MetaContexts.Keys), handshake.Export.MaximumPayload);
            return connection;
        }
        catch (Exception ex)
        {
            activity?.SetStatus(ActivityStatusCode.Error, ex.Message);
            if (stream is not null)
                await stream.DisposeAsync().ConfigureAwait(false);
            socket.Dispose();
            if (ex is NbdConnectionException failure)
                NbdTelemetry.ConnectionFailures.Add(1, new KeyValuePair<string, object?>(NbdTelemetry.ReasonTag, failure.Reason.ToString()));
            throw;
        }
    }

    public NbdExportInfo Export => _export;

    /// <summary>Requests sent or queued and not yet answered.</summary>
    public int InFlight
    {
        get
        {
            lock (_lock)
                return _pending.Count;
        }
    }

    /// <summary>True once the connection failed, or is closing (after DisconnectAsync or a server
    /// ESHUTDOWN); it accepts no new requests.</summary>
    public bool IsClosed => Volatile.Read(ref _failure) is not null || Volatile.Read(ref _closing) is not null;

    /// <summary>Completes when the connection has failed or closed, with the reason.</summary>
    public Task<Exception> Completion => _completion.Task;

    /// <summary>True when large WRITE payloads go to the socket by reference (<see cref="NbdClientOptions.ZeroCopyWrites"/>).</summary>
    internal bool SendsByReference => _splice is not null;

    /// <summary>The socket's SO_SNDBUF as the kernel reports it (tests check NbdClientOptions.SocketBufferSize).</summary>
    internal int SocketSendBufferSize => _socket.SendBufferSize;

    /// <summary>True when a write was acknowledged on this connection since its last successful flush.</summary>
    public bool IsDirty => Volatile.Read(ref _writesAcknowledged) > Volatile.Read(ref _flushedThrough);

    internal long WritesAcknowledged => Volatile.Read(ref _writesAcknowledged);

    /// <summary>Records that a flush (here or, with multi-conn, on another connection) covered the first
    /// <paramref name="generation"/> acknowledged writes.</summary>
    internal void MarkFlushed(long generation)
    {
        long current;
        do
        {
            current = Volatile.Read(ref _flushedThrough);
            if (generation <= current)
                return;
        }
        while (Interlocked.CompareExchange(ref _flushedThrough, generation, current) != current);
    }

    /// <summary>Reads buffer.Length bytes at offset (split above the maximum payload; holes are zero-filled).</summary>
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
        => ReadAsync(offset, buffer, NbdCommandFlags.None, cancellationToken);

    /// <summary>Reads with command flags (only <see cref="NbdCommandFlags.DontFragment"/> is valid).</summary>
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, NbdCommandFlags flags, CancellationToken cancellationToken = default)
    {
        if (Validate(NbdCommand.Read, flags, offset, buffer.Length) is { } refused)
            return ValueTask.FromException(refused);
        if (buffer.Length == 0)
            return default; // length 0 is undefined in the spec (nbdkit fails it): never send it
        var max = _export.MaximumPayload;
        if (buffer.Length <= max)
            return new ValueTask(SubmitAsync(new NbdRequest(NbdCommand.Read, flags, offset, (uint)buffer.Length) { Destination = buffer }, cancellationToken));
        return new ValueTask(SubmitParts(NbdCommand.Read, flags, offset, default, null, buffer, buffer.Length, max, null, cancellationToken));
    }

    /// <summary>Writes data at offset (split above the maximum payload). Completes when the server acknowledged every part.</summary>
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, NbdCommandFlags flags = NbdCommandFlags.None, CancellationToken cancellationToken = default)
    {
        if (Validate(NbdCommand.Write, flags, offset, data.Length) is { } refused)
            return ValueTask.FromException(refused);
        if (data.Length == 0)
            return default;
        var max = _export.MaximumPayload;
        if (data.Length <= max)
            return new ValueTask(SubmitAsync(new NbdRequest(NbdCommand.Write, flags, offset, (uint)data.Length) { Payload = data }, cancellationToken));
        return new ValueTask(SubmitParts(NbdCommand.Write, flags, offset, data, null, default, data.Length, max, null, cancellationToken));
    }

    public ValueTask WriteZeroesAsync(long offset, long length, NbdCommandFlags flags = NbdCommandFlags.None, CancellationToken cancellationToken = default)
        => PayloadlessAsync(NbdCommand.WriteZeroes, flags, offset, length, cancellationToken);

    public ValueTask TrimAsync(long offset, long length, NbdCommandFlags flags = NbdCommandFlags.None, CancellationToken cancellationToken = default)
        => PayloadlessAsync(NbdCommand.Trim, flags, offset, length, cancellationToken);

    public ValueTask CacheAsync(long offset, long length, CancellationToken cancellationToken = default)
        => PayloadlessAsync(NbdCommand.Cache, NbdCommandFlags.None, offset, length, cancellationToken);

    /// <summary>Largest effect length we put in one payload-less request (the field is 32 bits; servers
    /// accept large values: qemu-nbd 7.2 took a 3 GiB zero).</summary>
    private const long MaxEffectLength = 1L << 30;

    private ValueTask PayloadlessAsync(NbdCommand command, NbdCommandFlags flags, long offset, long length, CancellationToken cancellationToken)
    {
        if (Validate(command, flags, offset, length) is { } refused)
            return ValueTask.FromException(refused);
        if (length == 0)
            return default;
        var max = MaxEffectLength - (MaxEffectLength % _export.MinimumBlockSize);
        if (length <= max)
            return new ValueTask(SubmitAsync(new NbdRequest(command, flags, offset, (uint)length), cancellationToken));
        var parts = new List<Task>();
        for (var at = 0L; at < length; at += max)
            parts.Add(SubmitAsync(new NbdRequest(command, flags, offset + at, (uint)Math.Min(max, length - at)), cancellationToken));
        return new ValueTask(Tasks.WhenAllInOrderAsync(parts));
    }

    /// <summary>NBD_CMD_FLUSH on this connection: every write acknowledged before it is on stable storage.</summary>
    public async ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        CheckRequest(NbdCommand.Flush, NbdCommandFlags.None, 0, 0);
        // Writes acknowledged before the flush was sent are covered by it (spec, "Ordering of messages and writes").
        var generation = WritesAcknowledged;
        await SubmitAsync(new NbdRequest(NbdCommand.Flush, NbdCommandFlags.None, 0, 0), cancellationToken).ConfigureAwait(false);
        MarkFlushed(generation);
    }

    /// <summary>Extents of one context over [offset, offset+length): loops until covered, clips the last
    /// extent, merges neighbours with equal flags.</summary>
    public async ValueTask<IReadOnlyList<NbdExtent>> GetExtentsAsync(long offset, long length, string context = NbdMetaContexts.BaseAllocation, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(context);
        CheckRequest(NbdCommand.BlockStatus, NbdCommandFlags.None, offset, length);
        if (!_export.MetaContexts.TryGetValue(context, out var contextId))
            throw new NbdRequestRefusedException($"metadata context '{context}' was not negotiated with the server (negotiated: {string.Join(", ", _export.MetaContexts.Keys)})");
        var result = new List<NbdExtent>();
        var end = offset + length;
        var step = (1L << 31) - (1L << 31) % _export.MinimumBlockSize; // imageio asks 2 GiB at a time
        for (var at = offset; at < end;)
        {
            var request = new NbdRequest(NbdCommand.BlockStatus, NbdCommandFlags.None, at, (uint)Math.Min(step, end - at)) { Extents = [] };
            await SubmitAsync(request, cancellationToken).ConfigureAwait(false);
            var progress = 0L;
            if (request.Extents.TryGetValue(contextId, out var extents))
            {
                foreach (var extent in extents)
                {
                    if (result.Count > 0 && result[^1].Flags == extent.Flags && result[^1].End == extent.Offset)
                        result[^1] = result[^1] with { Length = result[^1].Length + extent.Length };
                    else
                        result.Add(extent);
                    progress += extent.Length;
                }
            }
            // nbdcopy: "NBD server is broken: it is not returning extent information".
            if (progress == 0)
                throw new NbdCommandException(NbdCommand.BlockStatus, at, Math.Min(step, end - at), NbdErrorCode.EIO, $"the server returned no extents for '{context}'");
            at += progress;
        }
        return result;
    }

    /// <summary>Waits until every write-like request submitted before this call has been answered.
    /// Throws if one of them failed.</summary>
    public ValueTask DrainWritesAsync(CancellationToken cancellationToken = default)
        => new(_writes.WaitForOutstandingAsync(cancellationToken));

    private void CheckRequest(NbdCommand command, NbdCommandFlags flags, long offset, long length)
    {
        if (Validate(command, flags, offset, length) is { } refused)
            throw refused;
    }

    /// <summary>What the export's flags and size forbid, refused before anything is sent.</summary>
    private NbdRequestRefusedException? Validate(NbdCommand command, NbdCommandFlags flags, long offset, long length)
    {
        var export = _export;
        var allowed = command switch
        {
            NbdCommand.Read => export.CanDontFragment ? NbdCommandFlags.DontFragment : NbdCommandFlags.None,
            NbdCommand.Write or NbdCommand.Trim => export.CanFua ? NbdCommandFlags.Fua : NbdCommandFlags.None,
            NbdCommand.WriteZeroes => NbdCommandFlags.NoHole | (export.CanFua ? NbdCommandFlags.Fua : 0) | (export.CanFastZero ? NbdCommandFlags.FastZero : 0),
            NbdCommand.BlockStatus => NbdCommandFlags.RequestOne,
            _ => NbdCommandFlags.None,
        };
        if ((flags & ~allowed) != 0)
            return new NbdRequestRefusedException($"flags {flags & ~allowed} are not allowed for {command} on this export (flags 0x{(ushort)export.Flags:x4})");
        var refused = command switch
        {
            NbdCommand.Write or NbdCommand.WriteZeroes or NbdCommand.Trim when export.IsReadOnly => "the export is read-only",
            NbdCommand.Flush when !export.CanFlush => "the export does not support flush",
            NbdCommand.Trim when !export.CanTrim => "the export does not support trim",
            NbdCommand.WriteZeroes when !export.CanWriteZeroes => "the export does not support write zeroes",
            NbdCommand.Cache when !export.CanCache => "the export does not support cache",
            NbdCommand.BlockStatus when !export.CanBlockStatus => "block status needs structured replies and a metadata context",
            _ => null,
        };
        if (refused is not null)
            return new NbdRequestRefusedException($"{command} refused: {refused}");
        // Overflow-safe: offset + length <= size  ⇔  offset <= size - length.
        if (offset < 0 || length < 0 || length > export.Size || offset > export.Size - length)
            return new NbdRequestRefusedException($"{command} offset={offset} length={length} is outside the export (size {export.Size})");
        var min = export.MinimumBlockSize;
        if (min > 1 && (offset % min != 0 || (length % min != 0 && offset + length != export.Size)))
            return new NbdRequestRefusedException($"{command} offset={offset} length={length} is not aligned to the server's minimum block size {min}");
        return null;
    }

    private NbdConnectionException ClosedError() =>
        Volatile.Read(ref _failure) as NbdConnectionException
        ?? Volatile.Read(ref _closing)
        ?? new NbdConnectionException(NbdConnectionFailure.Closed, NbdPhase.Transmission, "the connection is closed");

    /// <summary>Submits one write-like request for the pool: returns the caller's task. <paramref name="settled"/>
    /// is called once, inline, when the request is really over (the reply arrived or the connection died),
    /// which the pool's flush barrier and range ordering must wait for even when the caller was cancelled.</summary>
    internal Task SubmitForPool(NbdCommand command, NbdCommandFlags flags, long offset, ReadOnlyMemory<byte> payload,
        SplicePipe? source, long length, Action<Exception?> settled, CancellationToken cancellationToken)
    {
        CheckPoolRequest(command, flags, offset, length);
        var request = new NbdRequest(command, flags, offset, (uint)length) { Payload = payload, Source = source, OnSettled = settled };
        return SubmitAsync(request, cancellationToken);
    }

    /// <summary>Submits one write for the pool as requests of at most <paramref name="partSize"/> bytes, sent in
    /// order on this connection (each part of a pipe's payload is spliced from it in turn). The caller's task
    /// completes when every part is over; <paramref name="settled"/> is called once, when all of them are
    /// settled, with the first error. Why parts: qemu-nbd allocates a buffer per request, and with the
    /// issue's malloc setting one above 128 KiB is given back to the kernel when freed and faulted in again
    /// by the next request (docs/benchmarks.md, seventh round).</summary>
    internal Task SubmitPartsForPool(NbdCommand command, NbdCommandFlags flags, long offset, ReadOnlyMemory<byte> payload,
        SplicePipe? source, long length, int partSize, Action<Exception?> settled, CancellationToken cancellationToken)
        => SubmitParts(command, flags, offset, payload, source, default, length, partSize, settled, cancellationToken);

    /// <summary>Submits one read for the pool as requests of at most <paramref name="partSize"/> bytes, sent in
    /// order on this connection, each filling its slice of <paramref name="buffer"/>; as for writes, the
    /// caller's task completes when every part is over (none is still writing into the buffer).</summary>
    internal Task SubmitReadPartsForPool(long offset, Memory<byte> buffer, int partSize, CancellationToken cancellationToken)
        => SubmitParts(NbdCommand.Read, NbdCommandFlags.None, offset, default, null, buffer, buffer.Length, partSize, null, cancellationToken);

    /// <summary>One read or write as parts back to back on this connection, counted by one <see cref="RequestGroup"/>
    /// (the public ReadAsync/WriteAsync above the export's maximum payload, and the pool's cuts).</summary>
    private Task SubmitParts(NbdCommand command, NbdCommandFlags flags, long offset, ReadOnlyMemory<byte> payload,
        SplicePipe? source, Memory<byte> destination, long length, int partSize, Action<Exception?>? settled, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(partSize);
        var count = (int)((length + partSize - 1) / partSize);
        var group = new RequestGroup(count, settled);
        var parts = new NbdRequest[count];
        for (var i = 0; i < count; i++)
        {
            var at = (long)i * partSize;
            var partLength = (int)Math.Min(partSize, length - at);
            CheckPoolRequest(command, flags, offset + at, partLength);
            parts[i] = new NbdRequest(command, flags, offset + at, (uint)partLength)
            {
                Payload = payload.IsEmpty ? default : payload.Slice((int)at, partLength),
                Source = source,
                Destination = destination.IsEmpty ? default : destination.Slice((int)at, partLength),
                OnSettled = settled is null ? null : group.PartSettled,
                Group = group,
            };
        }
        return SubmitPartsAsync(parts, group, cancellationToken);
    }

    private void CheckPoolRequest(NbdCommand command, NbdCommandFlags flags, long offset, long length)
    {
        CheckRequest(command, flags, offset, length);
        if (length > (command == NbdCommand.Write ? _export.MaximumPayload : MaxEffectLength))
            throw new ArgumentOutOfRangeException(nameof(length), "the pool splits requests before submitting them");
    }

    private async Task SubmitPartsAsync(NbdRequest[] parts, RequestGroup group, CancellationToken cancellationToken)
    {
        for (var i = 0; i < parts.Length; i++)
        {
            try
            {
                // One after the other: each part is in the send queue before the next one waits for a slot.
                await AdmitAsync(parts[i], cancellationToken).ConfigureAwait(false);
            }
            catch (Exception error)
            {
                // This part (settled by AdmitAsync) and the later ones never reach the server.
                var canceled = error is OperationCanceledException;
                for (var j = i; j < parts.Length; j++)
                {
                    if (j > i)
                        parts[j].Settle(canceled ? null : error);
                    group.PartDone(canceled ? null : error, canceled);
                }
                break;
            }
        }
        await group.Task.ConfigureAwait(false);
    }

    private async Task SubmitAsync(NbdRequest request, CancellationToken cancellationToken)
    {
        await AdmitAsync(request, cancellationToken).ConfigureAwait(false);
        await request.Task.ConfigureAwait(false);
    }

    /// <summary>Takes a slot, gives the request a cookie and puts it in the send queue. Throws (with the request
    /// settled) when cancelled while waiting for a slot, or when the connection is closed.</summary>
    private async ValueTask AdmitAsync(NbdRequest request, CancellationToken cancellationToken)
    {
        try
        {
            await _slots.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            request.Settle(null);
            throw;
        }
        NbdConnectionException? closed = null;
        lock (_lock)
        {
            if (_failure is not null || _closing is not null)
            {
                _slots.Release();
                closed = ClosedError();
            }
            else
            {
                request.Cookie = ++_nextCookie;
                request.StartTimestamp = _time.GetTimestamp();
                _pending.Add(request.Cookie, request);
                if (request.IsWriteLike)
                    request.WriteSequence = _writes.Begin();
            }
        }
        if (closed is not null)
        {
            request.Settle(closed); // outside the lock: the pool's callback takes locks of its own
            throw closed;
        }
        NbdTelemetry.RequestsInFlight.Add(1);
        if (cancellationToken.CanBeCanceled)
            request.Registration = cancellationToken.UnsafeRegister(static (state, token) =>
            {
                var (connection, request) = ((NbdConnection, NbdRequest))state!;
                connection.OnCallerCancelled(request, token);
            }, (this, request));
        _sendQueue.Writer.TryWrite(request); // if the channel is closed, Fail() owns the request already
    }

    private void OnCallerCancelled(NbdRequest request, CancellationToken token)
    {
        if (!request.Cancel(token))
            return; // on the wire: the reply will be read and discarded
        // Never sent: forget it.
        lock (_lock)
        {
            if (!_pending.Remove(request.Cookie))
                return;
            SignalDrainedIfIdle();
        }
        Release(request, null, sent: false);
        request.Settle(null);
    }

    private void Release(NbdRequest request, Exception? error, bool sent)
    {
        if (request.IsWriteLike)
            _writes.End(request.WriteSequence, sent ? error : null);
        _slots.Release();
        NbdTelemetry.RequestsInFlight.Add(-1);
    }

    /// <summary>Fails the connection once: every pending request fails, the socket closes.</summary>
    private void Fail(Exception error)
    {
        List<NbdRequest> pending;
        lock (_lock)
        {
            if (_failure is not null)
                return;
            _failure = error;
            pending = [.. _pending.Values];
            _pending.Clear();
        }
        _sendQueue.Writer.TryComplete();
        _timeoutTimer?.Dispose();
        _splice?.Dispose();
        // With zero-copy writes the socket may still hold pages of unanswered payloads: keep the socket
        // itself open (a second descriptor) until it has given them up, then release their pins.
        var watch = _splice is not null ? SpliceSender.Duplicate(_socket) : -1;
        try
        {
            _stream.Dispose();
            _socket.Dispose();
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException)
        {
            // Closing a broken socket may throw; the connection is gone either way.
        }
        var closedByUs = error is NbdConnectionException { Reason: NbdConnectionFailure.Closed };
        if (!closedByUs && error is NbdConnectionException failure)
        {
            Log.ConnectionFailed(_logger, _endpointText, failure.Reason, failure.Phase, failure.Message);
            NbdTelemetry.ConnectionFailures.Add(1, new KeyValuePair<string, object?>(NbdTelemetry.ReasonTag, failure.Reason.ToString()));
        }
        foreach (var request in pending.OrderBy(r => r.Cookie))
        {
            var sent = request.WasSent;
            // A write that reached the wire may have been applied (measured on qemu-nbd 7.2): say so.
            var requestError = request.IsWriteLike && sent
                ? new NbdOutcomeUnknownException(request.Command, request.Offset, request.Length, error)
                : error;
            Release(request, requestError, sent);
            request.Finish(requestError, answered: false);
        }
        NbdTelemetry.Connections.Add(-1);
        _drained.TrySetResult();
        _completion.TrySetResult(error);
        if (_splice is not null)
            _ = ReleaseStrandedAsync(watch);
    }

    private void Strand(MemoryHandle pin)
    {
        lock (_stranded)
            _stranded.Add(pin);
    }

    /// <summary>After a failure: once the writer loop has stopped (no more splicing), waits until the
    /// socket holds none of our pages (the server read them, or closed), then releases the pins of the
    /// payloads it never answered. Until then that memory must stay as it was: the server may still read
    /// it and apply the write late. Without a descriptor to watch, the pins are kept for good.</summary>
    private async Task ReleaseStrandedAsync(int watch)
    {
        try
        {
            await _writeLoop.ConfigureAwait(false);
        }
        catch
        {
            // The writer's own failure is the connection's, already reported.
        }
        MemoryHandle[] stranded;
        lock (_stranded)
        {
            stranded = [.. _stranded];
            _stranded.Clear();
        }
        if (watch < 0)
            return;
        try
        {
            var scratch = stranded.Length > 0 ? new byte[64 * 1024] : [];
            var delay = TimeSpan.FromMilliseconds(10);
            while (stranded.Length > 0 && SpliceSender.HoldsSentBytes(watch, scratch))
            {
                await Task.Delay(delay, _time).ConfigureAwait(false);
                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.TicksPerSecond));
            }
            foreach (var pin in stranded)
                pin.Dispose();
        }
        finally
        {
            SpliceSender.CloseDescriptor(watch);
        }
    }

    private void SignalDrainedIfIdle()
    {
        if (_closing is not null && _pending.Count == 0)
            _drained.TrySetResult();
    }

    private void CheckRequestTimeout()
    {
        NbdRequest? oldest = null;
        lock (_lock)
        {
            foreach (var request in _pending.Values)
            {
                if (oldest is null || request.StartTimestamp < oldest.StartTimestamp)
                    oldest = request;
            }
        }
        if (oldest is not null && _time.GetElapsedTime(oldest.StartTimestamp) > _options.RequestTimeout)
        {
            Fail(new NbdConnectionException(NbdConnectionFailure.RequestTimeout, NbdPhase.Transmission,
                $"no reply to {oldest.Command} offset={oldest.Offset} length={oldest.Length} within {_options.RequestTimeout.TotalSeconds:0.#} s; the server seems hung"));
        }
    }

    /// <summary>Soft disconnect: waits for requests in flight (bounded by the request timeout), sends
    /// NBD_CMD_DISC, closes. The spec says a client SHOULD wait for in-flight requests before DISC: a DISC
    /// with writes in flight lost them on nbdkit and lost their replies on qemu-nbd.</summary>
    public async ValueTask DisconnectAsync(CancellationToken cancellationToken = default)
    {
        BeginClosing(new NbdConnectionException(NbdConnectionFailure.Closed, NbdPhase.Disconnect, "the connection was closed by the client"));
        await FinishDisconnectAsync(cancellationToken).ConfigureAwait(false);
    }

    private void BeginClosing(NbdConnectionException reason)
    {
        lock (_lock)
        {
            _closing ??= reason;
            SignalDrainedIfIdle();
        }
    }

    private async Task FinishDisconnectAsync(CancellationToken cancellationToken)
    {
        try
        {
            var limit = _options.RequestTimeout == Timeout.InfiniteTimeSpan ? TimeSpan.FromSeconds(30) : _options.RequestTimeout;
            await _drained.Task.WaitAsync(limit, _time, cancellationToken).ConfigureAwait(false);
            if (Volatile.Read(ref _failure) is null)
            {
                _sendQueue.Writer.TryWrite(new NbdRequest(NbdCommand.Disconnect, NbdCommandFlags.None, 0, 0));
                _sendQueue.Writer.TryComplete();
                await _writeLoop.WaitAsync(TimeSpan.FromSeconds(5), _time, cancellationToken).ConfigureAwait(false);
                // The server closes after DISC; wait briefly for its EOF so it sees a clean goodbye.
                await _readLoop.WaitAsync(TimeSpan.FromSeconds(2), _time, cancellationToken).ConfigureAwait(false);
            }
        }
        catch (TimeoutException)
        {
            // Gave up waiting: fall through to a hard close.
        }
        finally
        {
            Fail(_closing ?? new NbdConnectionException(NbdConnectionFailure.Closed, NbdPhase.Disconnect, "the connection was closed by the client"));
            Log.Disconnected(_logger, _endpointText);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Volatile.Read(ref _failure) is not null)
            return;
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5), _time);
            await DisconnectAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            Fail(new NbdConnectionException(NbdConnectionFailure.Closed, NbdPhase.Disconnect, "the connection was closed by the client"));
        }
    }
}
