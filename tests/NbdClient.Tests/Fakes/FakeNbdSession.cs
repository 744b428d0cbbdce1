using System.Net.Sockets;
using System.Text;

namespace NbdClient.Tests.Fakes;

/// <summary>One accepted client connection of <see cref="FakeNbdServer"/>: raw I/O helpers, the default
/// handshake and request handling, and a record of what the client sent.</summary>
public sealed class FakeNbdSession
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly object _lock = new();
    private readonly List<FakeOption> _options = new();
    private readonly List<FakeRequest> _requests = new();
    private readonly List<string> _violations = new();
    private readonly HashSet<ulong> _outstanding = new();
    private readonly Dictionary<string, uint> _selectedContexts = new();
    private readonly TaskCompletionSource _ended = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _disconnect = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile bool _closed;

    internal FakeNbdSession(FakeNbdServer server, Socket socket, int index)
    {
        Server = server;
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
        Index = index;
    }

    public FakeNbdServer Server { get; }
    public int Index { get; }

    /// <summary>Client flags (4 bytes after the greeting), once received.</summary>
    public uint? ClientFlags { get; private set; }

    /// <summary>True once STRUCTURED_REPLY was acknowledged.</summary>
    public bool StructuredReplies { get; set; }

    /// <summary>True once the handshake finished (GO ACK or EXPORT_NAME reply sent).</summary>
    public bool InTransmission { get; set; }

    /// <summary>Handshake flags this session actually advertised.</summary>
    public ushort AdvertisedHandshakeFlags { get; private set; }

    public bool IsClosed => _closed;

    public IReadOnlyList<FakeOption> Options
    {
        get { lock (_lock) return _options.ToArray(); }
    }

    /// <summary>Every request header received (DISC included), in arrival order.</summary>
    public IReadOnlyList<FakeRequest> Requests
    {
        get { lock (_lock) return _requests.ToArray(); }
    }

    /// <summary>Rules of the protocol the client broke, as seen by the server.</summary>
    public IReadOnlyList<string> Violations
    {
        get { lock (_lock) return _violations.ToArray(); }
    }

    public IReadOnlyDictionary<string, uint> SelectedContexts
    {
        get { lock (_lock) return new Dictionary<string, uint>(_selectedContexts); }
    }

    public bool DisconnectReceived => _disconnect.Task.IsCompleted;

    /// <summary>Completes when NBD_CMD_DISC arrives.</summary>
    public Task Disconnect => _disconnect.Task;

    /// <summary>Completes when the session ended (script finished, socket closed).</summary>
    public Task Ended => _ended.Task;

    /// <summary>The exception that ended the session when the client went away mid-script.</summary>
    public Exception? EndReason { get; private set; }

    public void Violation(string text)
    {
        lock (_lock)
            _violations.Add(text);
        Signal();
    }

    private void Signal()
    {
        TaskCompletionSource old;
        lock (_lock)
        {
            old = _changed;
            _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        old.TrySetResult();
    }

    /// <summary>Waits (bounded) until the recorded state satisfies a condition.</summary>
    public async Task WaitUntilAsync(Func<FakeNbdSession, bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + TestBounds.Hang;
        while (true)
        {
            Task changed;
            lock (_lock)
                changed = _changed.Task;
            if (condition(this))
                return;
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero)
                throw new TimeoutException($"fake server: timed out waiting until {what}");
            await Task.WhenAny(changed, _ended.Task, Task.Delay(left)).ConfigureAwait(false);
            if (_ended.Task.IsCompleted && !condition(this))
                throw new InvalidOperationException($"fake server: session ended before {what}");
        }
    }

    internal async Task RunAsync()
    {
        try
        {
            if (Server.OnAccept is { } onAccept)
            {
                await onAccept(this).ConfigureAwait(false);
            }
            else if (await RunDefaultHandshakeAsync().ConfigureAwait(false) && !_closed)
            {
                InTransmission = true;
                await (Server.Transmission ?? (s => s.ServeAsync()))(this).ConfigureAwait(false);
            }
            if (!_closed)
                await CloseAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (IsConnectionLoss(ex))
        {
            EndReason = ex;
        }
        catch (Exception ex)
        {
            Server.AddFault(ex);
        }
        finally
        {
            Abort();
            _ended.TrySetResult();
            Signal();
        }
    }

    private static bool IsConnectionLoss(Exception ex)
        => ex is EndOfStreamException or IOException or SocketException or ObjectDisposedException or OperationCanceledException;

    // ---------------------------------------------------------------- raw I/O

    public async Task SendAsync(ReadOnlyMemory<byte> bytes)
    {
        await _stream.WriteAsync(bytes).ConfigureAwait(false);
    }

    /// <summary>Exactly n bytes; EndOfStreamException on EOF.</summary>
    public async Task<byte[]> ReadExactAsync(int count)
    {
        var buffer = new byte[count];
        await _stream.ReadExactlyAsync(buffer).ConfigureAwait(false);
        return buffer;
    }

    /// <summary>Exactly n bytes, or null on a clean EOF before the first byte.</summary>
    public async Task<byte[]?> ReadExactOrEofAsync(int count)
    {
        var buffer = new byte[count];
        var n = await _stream.ReadAtLeastAsync(buffer, count, throwOnEndOfStream: false).ConfigureAwait(false);
        if (n == 0)
            return null;
        if (n < count)
            throw new EndOfStreamException($"fake server: EOF after {n} of {count} bytes");
        return buffer;
    }

    /// <summary>Graceful close: half-close (the client reads EOF), discard what the client still sends
    /// until it closes too (bounded), then close. Half-closing first keeps the client's own writes from
    /// failing with EPIPE, so a test sees the EOF deterministically.</summary>
    public async Task CloseAsync()
    {
        if (_closed)
            return;
        _closed = true;
        try
        {
            _socket.Shutdown(SocketShutdown.Send);
            var scratch = new byte[64 * 1024];
            using var cts = new CancellationTokenSource(TestBounds.Hang);
            while (await _stream.ReadAsync(scratch, cts.Token).ConfigureAwait(false) > 0)
            {
            }
        }
        catch (Exception ex) when (IsConnectionLoss(ex))
        {
        }
        finally
        {
            Abort();
            Signal();
        }
    }

    /// <summary>Abrupt close (a killed server).</summary>
    public void Abort()
    {
        _closed = true;
        _socket.Dispose();
    }

    /// <summary>Never answer again; returns when the client goes away (or the server is disposed).</summary>
    public async Task HangAsync()
    {
        var scratch = new byte[64 * 1024];
        try
        {
            while (await _stream.ReadAsync(scratch).ConfigureAwait(false) > 0)
            {
            }
        }
        catch (Exception ex) when (IsConnectionLoss(ex))
        {
        }
    }

    // ---------------------------------------------------------------- handshake

    public Task SendGreetingAsync(ushort flags, ulong magic = Wire.NbdMagic, ulong second = Wire.IHaveOpt)
    {
        AdvertisedHandshakeFlags = flags;
        return SendAsync(WireBuilder.Greeting(flags, magic, second));
    }

    public async Task<uint?> ReadClientFlagsAsync()
    {
        var b = await ReadExactOrEofAsync(4).ConfigureAwait(false);
        if (b is null)
            return null;
        var flags = Wire.U32(b, 0);
        ClientFlags = flags;
        var allowed = (uint)(AdvertisedHandshakeFlags & (Wire.GFlagFixedNewstyle | Wire.GFlagNoZeroes));
        if ((flags & ~allowed) != 0)
            Violation($"client flags 0x{flags:x} set bits the server did not advertise (server 0x{AdvertisedHandshakeFlags:x})");
        Signal();
        return flags;
    }

    /// <summary>Next option (recorded), or null on EOF.</summary>
    public async Task<FakeOption?> ReadOptionAsync()
    {
        var header = await ReadExactOrEofAsync(16).ConfigureAwait(false);
        if (header is null)
            return null;
        var magic = Wire.U64(header, 0);
        var code = Wire.U32(header, 8);
        var length = Wire.U32(header, 12);
        if (magic != Wire.IHaveOpt)
        {
            Violation($"option header magic 0x{magic:x16}");
            throw new EndOfStreamException("bad option magic; dropping the client");
        }
        if (length > 64 * 1024)
        {
            Violation($"option {code} length {length} is absurd");
            throw new EndOfStreamException("oversized option");
        }
        var data = length == 0 ? [] : await ReadExactAsync((int)length).ConfigureAwait(false);
        var option = new FakeOption(code, data);
        lock (_lock)
            _options.Add(option);
        Signal();
        return option;
    }

    public Task SendOptionReplyAsync(uint option, uint type, ReadOnlySpan<byte> data = default)
        => SendAsync(WireBuilder.OptionReply(option, type, data));

    public Task SendOptionErrorAsync(uint option, uint type, string message = "")
        => SendAsync(WireBuilder.OptionReply(option, type, Encoding.UTF8.GetBytes(message)));

    public Task SendInfoExportAsync(uint option, ulong size, ushort flags)
        => SendOptionReplyAsync(option, Wire.RepInfo, new WireBuilder().U16(Wire.InfoExport).U64(size).U16(flags).ToArray());

    public Task SendInfoBlockSizeAsync(uint option, uint minimum, uint preferred, uint maximum)
        => SendOptionReplyAsync(option, Wire.RepInfo, new WireBuilder().U16(Wire.InfoBlockSize).U32(minimum).U32(preferred).U32(maximum).ToArray());

    /// <summary>The well-behaved fixed-newstyle handshake, driven by the server's configuration.
    /// Returns true when the transmission phase was reached.</summary>
    public async Task<bool> RunDefaultHandshakeAsync()
    {
        var server = Server;
        await SendGreetingAsync(server.HandshakeFlags).ConfigureAwait(false);
        var cflags = await ReadClientFlagsAsync().ConfigureAwait(false);
        if (cflags is null)
            return false;
        var fixedNewstyle = (server.HandshakeFlags & Wire.GFlagFixedNewstyle) != 0;
        var noZeroes = (cflags.Value & Wire.GFlagNoZeroes) != 0 && (server.HandshakeFlags & Wire.GFlagNoZeroes) != 0;

        while (!_closed)
        {
            var option = await ReadOptionAsync().ConfigureAwait(false);
            if (option is null)
                return false;
            if (server.OnOption is { } hook && await hook(this, option).ConfigureAwait(false))
            {
                if (InTransmission)
                    return true;
                continue;
            }
            if (!fixedNewstyle && option.Code != Wire.OptExportName)
            {
                // A non-fixed newstyle server does not know option replies: it drops the client.
                Violation($"option {option.Code} sent to a server without FIXED_NEWSTYLE");
                await CloseAsync().ConfigureAwait(false);
                return false;
            }
            if (await HandleDefaultOptionAsync(option, noZeroes).ConfigureAwait(false))
                return true;
        }
        return false;
    }

    /// <summary>Default answer to one option; true when it started the transmission phase.</summary>
    public async Task<bool> HandleDefaultOptionAsync(FakeOption option, bool noZeroes)
    {
        var server = Server;
        switch (option.Code)
        {
            case Wire.OptExportName:
            {
                var name = Encoding.UTF8.GetString(option.Data);
                if (name != server.ExportName)
                {
                    await CloseAsync().ConfigureAwait(false); // EXPORT_NAME has no error reply
                    return false;
                }
                var reply = new WireBuilder().U64(server.Size).U16(server.TransmissionFlags);
                if (!noZeroes)
                    reply.Zeroes(124);
                await SendAsync(reply.ToArray()).ConfigureAwait(false);
                InTransmission = true;
                return true;
            }
            case Wire.OptAbort:
                await SendOptionReplyAsync(option.Code, Wire.RepAck).ConfigureAwait(false);
                await CloseAsync().ConfigureAwait(false);
                return false;
            case Wire.OptStructuredReply:
                if (option.Data.Length != 0)
                {
                    Violation("STRUCTURED_REPLY with data");
                    await SendOptionErrorAsync(option.Code, Wire.RepErrInvalid, "no data expected").ConfigureAwait(false);
                }
                else if (server.StructuredReplies)
                {
                    StructuredReplies = true;
                    await SendOptionReplyAsync(option.Code, Wire.RepAck).ConfigureAwait(false);
                }
                else
                {
                    await SendOptionErrorAsync(option.Code, Wire.RepErrUnsup).ConfigureAwait(false);
                }
                return false;
            case Wire.OptSetMetaContext:
            case Wire.OptListMetaContext:
            {
                if (option.Code == Wire.OptSetMetaContext && !StructuredReplies)
                {
                    Violation("SET_META_CONTEXT before STRUCTURED_REPLY was acknowledged");
                    await SendOptionErrorAsync(option.Code, Wire.RepErrInvalid, "structured replies not negotiated").ConfigureAwait(false);
                    return false;
                }
                var parsed = option.ParseMetaContext();
                if (parsed is null)
                {
                    Violation($"malformed meta context option: {Wire.ToHex(option.Data)}");
                    await SendOptionErrorAsync(option.Code, Wire.RepErrInvalid, "malformed").ConfigureAwait(false);
                    return false;
                }
                var (exportName, queries) = parsed.Value;
                if (option.Code == Wire.OptSetMetaContext)
                {
                    lock (_lock)
                        _selectedContexts.Clear();
                }
                if (exportName != server.ExportName)
                {
                    await SendOptionErrorAsync(option.Code, Wire.RepErrUnknown, "no such export").ConfigureAwait(false);
                    return false;
                }
                foreach (var query in queries)
                {
                    if (!server.MetaContexts.TryGetValue(query, out var id))
                        continue;
                    if (option.Code == Wire.OptSetMetaContext)
                    {
                        lock (_lock)
                            _selectedContexts[query] = id;
                    }
                    await SendOptionReplyAsync(option.Code, Wire.RepMetaContext,
                        new WireBuilder().U32(option.Code == Wire.OptSetMetaContext ? id : 0).Utf8(query).ToArray()).ConfigureAwait(false);
                }
                await SendOptionReplyAsync(option.Code, Wire.RepAck).ConfigureAwait(false);
                return false;
            }
            case Wire.OptGo:
            case Wire.OptInfo:
            {
                var parsed = option.ParseGo();
                if (parsed is null)
                {
                    Violation($"malformed GO/INFO option: {Wire.ToHex(option.Data)}");
                    await SendOptionErrorAsync(option.Code, Wire.RepErrInvalid, "malformed").ConfigureAwait(false);
                    return false;
                }
                if (parsed.Value.ExportName != server.ExportName)
                {
                    await SendOptionErrorAsync(option.Code, Wire.RepErrUnknown, "export not found").ConfigureAwait(false);
                    return false;
                }
                if (server.BlockSize is { } bs && server.BlockSizeBeforeExport)
                    await SendInfoBlockSizeAsync(option.Code, bs.Minimum, bs.Preferred, bs.Maximum).ConfigureAwait(false);
                await SendInfoExportAsync(option.Code, server.Size, server.TransmissionFlags).ConfigureAwait(false);
                if (server.BlockSize is { } bs2 && !server.BlockSizeBeforeExport)
                    await SendInfoBlockSizeAsync(option.Code, bs2.Minimum, bs2.Preferred, bs2.Maximum).ConfigureAwait(false);
                await SendOptionReplyAsync(option.Code, Wire.RepAck).ConfigureAwait(false);
                if (option.Code == Wire.OptGo)
                {
                    InTransmission = true;
                    return true;
                }
                return false;
            }
            default:
                await SendOptionErrorAsync(option.Code, Wire.RepErrUnsup, "unsupported option").ConfigureAwait(false);
                return false;
        }
    }

    // ---------------------------------------------------------------- transmission

    /// <summary>Next request (recorded and checked against the protocol rules), or null on EOF.
    /// WRITE payloads are read too.</summary>
    public async Task<FakeRequest?> ReadRequestAsync()
    {
        var h = await ReadExactOrEofAsync(Wire.RequestHeaderSize).ConfigureAwait(false);
        if (h is null)
            return null;
        var magic = Wire.U32(h, 0);
        var flags = Wire.U16(h, 4);
        var type = Wire.U16(h, 6);
        var cookie = Wire.U64(h, 8);
        var offset = Wire.U64(h, 16);
        var length = Wire.U32(h, 24);
        byte[]? payload = null;
        if (magic == Wire.RequestMagic && type == Wire.CmdWrite)
        {
            if (length > 64 * 1024 * 1024)
            {
                Violation($"WRITE length {length} above 64 MiB; dropping the client");
                throw new EndOfStreamException("oversized write");
            }
            payload = await ReadExactAsync((int)length).ConfigureAwait(false);
        }
        var request = new FakeRequest(magic, flags, type, cookie, offset, length, payload);
        Check(request);
        lock (_lock)
        {
            _requests.Add(request);
            if (type != Wire.CmdDisc)
                _outstanding.Add(cookie);
        }
        if (type == Wire.CmdDisc)
            _disconnect.TrySetResult();
        Signal();
        return request;
    }

    /// <summary>Reads n requests (DISC excluded — a DISC ends the wait with an exception).</summary>
    public async Task<List<FakeRequest>> ReadRequestsAsync(int count)
    {
        var result = new List<FakeRequest>(count);
        while (result.Count < count)
        {
            var r = await ReadRequestAsync().ConfigureAwait(false) ?? throw new EndOfStreamException($"client closed after {result.Count} of {count} requests");
            if (r.Type == Wire.CmdDisc)
                throw new EndOfStreamException($"client disconnected after {result.Count} of {count} requests");
            result.Add(r);
        }
        return result;
    }

    private void Check(FakeRequest r)
    {
        var server = Server;
        var tf = server.TransmissionFlags;
        string? bad = null;
        void Add(string text) => bad = bad is null ? text : bad + "; " + text;

        if (r.Magic != Wire.RequestMagic)
            Add($"request magic 0x{r.Magic:x8}");
        lock (_lock)
        {
            if (DisconnectReceived)
                Add("request after NBD_CMD_DISC");
            if (r.Type != Wire.CmdDisc && _outstanding.Contains(r.Cookie))
                Add($"cookie {r.Cookie} reused while still in flight");
        }
        var maxPayload = server.BlockSize is { } bs && bs.Maximum != uint.MaxValue ? bs.Maximum : (uint)Wire.DefaultMaxPayload;
        var end = r.Offset + r.Length;
        switch (r.Type)
        {
            case Wire.CmdRead:
            case Wire.CmdWrite:
                if (r.Length == 0)
                    Add("zero-length request");
                if (r.Length > maxPayload)
                    Add($"payload {r.Length} above the advertised maximum {maxPayload}");
                if (end > server.Size)
                    Add("request past the end of the export");
                if (r.Type == Wire.CmdWrite && (tf & Wire.TfReadOnly) != 0)
                    Add("WRITE on a read-only export");
                break;
            case Wire.CmdTrim:
            case Wire.CmdWriteZeroes:
            case Wire.CmdCache:
            case Wire.CmdBlockStatus:
                if (r.Length == 0)
                    Add("zero-length request");
                if (end > server.Size)
                    Add("request past the end of the export");
                if (r.Type == Wire.CmdTrim && (tf & Wire.TfSendTrim) == 0)
                    Add("TRIM without SEND_TRIM");
                if (r.Type == Wire.CmdWriteZeroes && (tf & Wire.TfSendWriteZeroes) == 0)
                    Add("WRITE_ZEROES without SEND_WRITE_ZEROES");
                if (r.Type == Wire.CmdCache && (tf & Wire.TfSendCache) == 0)
                    Add("CACHE without SEND_CACHE");
                if (r.Type is Wire.CmdTrim or Wire.CmdWriteZeroes && (tf & Wire.TfReadOnly) != 0)
                    Add("write-like request on a read-only export");
                if (r.Type == Wire.CmdBlockStatus && (!StructuredReplies || SelectedContexts.Count == 0))
                    Add("BLOCK_STATUS without structured replies and a selected context");
                break;
            case Wire.CmdFlush:
                if ((tf & Wire.TfSendFlush) == 0)
                    Add("FLUSH without SEND_FLUSH");
                if (r.Offset != 0 || r.Length != 0)
                    Add("FLUSH with offset/length");
                break;
            case Wire.CmdDisc:
                if (r.Offset != 0 || r.Length != 0 || r.Flags != 0)
                    Add("DISC with offset/length/flags");
                break;
            default:
                Add($"unknown command {r.Type}");
                break;
        }
        if (server.BlockSize is { Minimum: > 1 } b && r.Type is Wire.CmdRead or Wire.CmdWrite or Wire.CmdTrim or Wire.CmdWriteZeroes or Wire.CmdCache
            && (r.Offset % b.Minimum != 0 || r.Length % b.Minimum != 0))
            Add($"not aligned to the minimum block size {b.Minimum}");

        var allowed = r.Type switch
        {
            Wire.CmdRead => (tf & Wire.TfSendDf) != 0 && StructuredReplies ? Wire.CmdFlagDf : 0,
            Wire.CmdWrite or Wire.CmdTrim => (tf & Wire.TfSendFua) != 0 ? Wire.CmdFlagFua : 0,
            Wire.CmdWriteZeroes => ((tf & Wire.TfSendFua) != 0 ? Wire.CmdFlagFua : 0) | Wire.CmdFlagNoHole
                | ((tf & Wire.TfSendFastZero) != 0 ? Wire.CmdFlagFastZero : 0),
            Wire.CmdBlockStatus => Wire.CmdFlagReqOne,
            _ => 0,
        };
        if ((r.Flags & ~allowed) != 0)
            Add($"command flags 0x{r.Flags:x} not allowed for command {r.Type} (allowed 0x{allowed:x})");
        if (bad is not null)
            Violation($"{r}: {bad}");
    }

    private void Answered(ulong cookie)
    {
        lock (_lock)
            _outstanding.Remove(cookie);
    }

    public Task SendSimpleReplyAsync(ulong cookie, uint error, ReadOnlyMemory<byte> data = default)
    {
        Answered(cookie);
        return SendAsync(WireBuilder.SimpleReply(cookie, error, data.Span));
    }

    public Task SendChunkAsync(ushort flags, ushort type, ulong cookie, ReadOnlyMemory<byte> payload)
    {
        if ((flags & Wire.ReplyFlagDone) != 0)
            Answered(cookie);
        return SendAsync(WireBuilder.Chunk(flags, type, cookie, payload.Span));
    }

    public Task SendDataChunkAsync(ulong cookie, ulong offset, ReadOnlyMemory<byte> data, bool done)
    {
        if (done)
            Answered(cookie);
        return SendAsync(WireBuilder.DataChunk(cookie, offset, data.Span, done));
    }

    public Task SendHoleChunkAsync(ulong cookie, ulong offset, uint size, bool done)
    {
        if (done)
            Answered(cookie);
        return SendAsync(WireBuilder.HoleChunk(cookie, offset, size, done));
    }

    public Task SendErrorChunkAsync(ulong cookie, uint error, string message, bool done, ulong? offset = null)
    {
        if (done)
            Answered(cookie);
        return SendAsync(WireBuilder.ErrorChunk(cookie, error, message, done, offset));
    }

    public Task SendBlockStatusAsync(ulong cookie, uint contextId, IEnumerable<(uint Length, uint Flags)> extents, bool done)
    {
        if (done)
            Answered(cookie);
        return SendAsync(WireBuilder.BlockStatusChunk(cookie, contextId, extents, done));
    }

    /// <summary>The default request loop: answer everything well until DISC or EOF.</summary>
    public async Task ServeAsync()
    {
        while (!_closed)
        {
            var request = await ReadRequestAsync().ConfigureAwait(false);
            if (request is null)
                return;
            if (request.Type == Wire.CmdDisc)
            {
                await AfterDisconnectAsync().ConfigureAwait(false);
                return;
            }
            if (Server.OnRequest is { } hook && await hook(this, request).ConfigureAwait(false))
                continue;
            if (_closed)
                return;
            await ReplyDefaultAsync(request).ConfigureAwait(false);
        }
    }

    /// <summary>After DISC the client MUST NOT send anything: record it if it does, then close.</summary>
    public async Task AfterDisconnectAsync()
    {
        var extra = await ReadExactOrEofAsync(1).ConfigureAwait(false);
        if (extra is not null)
            Violation("data sent after NBD_CMD_DISC");
        await CloseAsync().ConfigureAwait(false);
    }

    /// <summary>A well-behaved reply to one request, backed by <see cref="FakeNbdServer.Disk"/>.</summary>
    public async Task ReplyDefaultAsync(FakeRequest r)
    {
        var server = Server;
        var inRange = r.Offset + r.Length <= server.Size;
        switch (r.Type)
        {
            case Wire.CmdRead:
                if (!inRange)
                {
                    await ReplyErrorAsync(r, Wire.EINVAL, "read past the end").ConfigureAwait(false);
                    return;
                }
                var data = server.Disk.Read((long)r.Offset, (int)r.Length);
                if (StructuredReplies)
                    await SendDataChunkAsync(r.Cookie, r.Offset, data, done: true).ConfigureAwait(false);
                else
                    await SendSimpleReplyAsync(r.Cookie, 0, data).ConfigureAwait(false);
                return;
            case Wire.CmdWrite:
                if (!inRange)
                {
                    await SendSimpleReplyAsync(r.Cookie, Wire.ENOSPC).ConfigureAwait(false);
                    return;
                }
                if ((server.TransmissionFlags & Wire.TfReadOnly) != 0)
                {
                    await SendSimpleReplyAsync(r.Cookie, Wire.EPERM).ConfigureAwait(false);
                    return;
                }
                server.Disk.Write((long)r.Offset, r.Payload);
                await SendSimpleReplyAsync(r.Cookie, 0).ConfigureAwait(false);
                return;
            case Wire.CmdWriteZeroes:
            case Wire.CmdTrim:
                if (!inRange)
                {
                    await SendSimpleReplyAsync(r.Cookie, Wire.ENOSPC).ConfigureAwait(false);
                    return;
                }
                server.Disk.Zero((long)r.Offset, r.Length);
                await SendSimpleReplyAsync(r.Cookie, 0).ConfigureAwait(false);
                return;
            case Wire.CmdFlush:
            case Wire.CmdCache:
                await SendSimpleReplyAsync(r.Cookie, 0).ConfigureAwait(false);
                return;
            case Wire.CmdBlockStatus:
            {
                var contexts = SelectedContexts;
                if (!StructuredReplies || contexts.Count == 0 || !inRange)
                {
                    await ReplyErrorAsync(r, Wire.EINVAL, "block status not possible").ConfigureAwait(false);
                    return;
                }
                var extents = server.Disk.Extents((long)r.Offset, r.Length);
                if ((r.Flags & Wire.CmdFlagReqOne) != 0)
                    extents = extents.Take(1).ToList();
                var i = 0;
                foreach (var id in contexts.Values)
                    await SendBlockStatusAsync(r.Cookie, id, extents, done: ++i == contexts.Count).ConfigureAwait(false);
                return;
            }
            default:
                await ReplyErrorAsync(r, Wire.EINVAL, "unknown command").ConfigureAwait(false);
                return;
        }
    }

    /// <summary>Error reply in the form real servers use: an ERROR chunk with SR, else a simple reply.</summary>
    public Task ReplyErrorAsync(FakeRequest r, uint error, string message = "")
        => StructuredReplies
            ? SendErrorChunkAsync(r.Cookie, error, message, done: true)
            : SendSimpleReplyAsync(r.Cookie, error);
}
