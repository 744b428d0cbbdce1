using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Security;
using System.Net.Sockets;
using NbdClient.Internal;
using NbdClient.Protocol;

namespace NbdClient;

public sealed partial class NbdConnection
{
    /// <summary>Payloads up to this size are copied next to their header, so small writes cost one send.</summary>
    private const int CoalesceLimit = 16 * 1024;

    /// <summary>The single writer: headers of consecutive requests are batched into one send; large
    /// payloads go straight from the caller's memory to the socket.</summary>
    private async Task WriteLoopAsync()
    {
        var buffer = new byte[64 * 1024];
        var used = 0;
        var queue = _sendQueue.Reader;
        try
        {
            while (await queue.WaitToReadAsync().ConfigureAwait(false))
            {
                while (queue.TryRead(out var request))
                {
                    if (request.Command == NbdCommand.Disconnect)
                    {
                        // DISC has no reply; nothing may follow it. Then half-close, as libnbd does.
                        NbdWire.WriteRequestHeader(buffer.AsSpan(used), NbdCommandFlags.None, NbdCommand.Disconnect, ++_nextCookie, 0, 0);
                        used += NbdLimits.RequestHeaderSize;
                        await _stream.WriteAsync(buffer.AsMemory(0, used)).ConfigureAwait(false);
                        used = 0;
                        await ShutdownSendAsync().ConfigureAwait(false);
                        return;
                    }
                    if (!request.TryBeginSend())
                    {
                        request.Group?.Break();
                        continue; // cancelled while queued
                    }
                    try
                    {
                        if (buffer.Length - used < NbdLimits.RequestHeaderSize + CoalesceLimit)
                        {
                            await _stream.WriteAsync(buffer.AsMemory(0, used)).ConfigureAwait(false);
                            used = 0;
                        }
                        NbdWire.WriteRequestHeader(buffer.AsSpan(used), request.Flags, request.Command, request.Cookie, (ulong)request.Offset, request.Length);
                        used += NbdLimits.RequestHeaderSize;
                        var payload = request.Payload;
                        if (request.Source is { } source)
                        {
                            await _stream.WriteAsync(buffer.AsMemory(0, used)).ConfigureAwait(false);
                            used = 0;
                            if (_splice is not null)
                                await _splice.SendFromPipeAsync(source, (int)request.Length).ConfigureAwait(false);
                            else
                                await CopyFromPipeAsync(source, (int)request.Length, buffer).ConfigureAwait(false);
                        }
                        else if (payload.Length > 0)
                        {
                            if (payload.Length <= CoalesceLimit)
                            {
                                payload.Span.CopyTo(buffer.AsSpan(used));
                                used += payload.Length;
                            }
                            else
                            {
                                await _stream.WriteAsync(buffer.AsMemory(0, used)).ConfigureAwait(false);
                                used = 0;
                                if (_splice is not null && payload.Length >= SpliceSender.MinimumPayload)
                                    await SendByReferenceAsync(request, payload).ConfigureAwait(false);
                                else
                                    await _stream.WriteAsync(payload).ConfigureAwait(false);
                            }
                        }
                    }
                    finally
                    {
                        request.EndSend();
                    }
                }
                if (used > 0)
                {
                    await _stream.WriteAsync(buffer.AsMemory(0, used)).ConfigureAwait(false);
                    used = 0;
                }
            }
        }
        catch (Exception ex)
        {
            Fail(TransmissionError(ex, "sending"));
        }
    }

    /// <summary>A payload in a pipe on a connection that cannot splice (TLS, zero-copy off): read out and sent.</summary>
    private async Task CopyFromPipeAsync(SplicePipe source, int length, byte[] buffer)
    {
        for (var left = length; left > 0;)
        {
            var got = source.Read(buffer.AsSpan(0, Math.Min(buffer.Length, left)));
            if (got == 0)
                throw new InvalidOperationException($"the pipe ran out {left} bytes before the request's length");
            await _stream.WriteAsync(buffer.AsMemory(0, got)).ConfigureAwait(false);
            left -= got;
        }
    }

    /// <summary>Zero-copy send: the payload stays pinned until the server answers (NbdRequest.LendPayload).</summary>
    private unsafe Task SendByReferenceAsync(NbdRequest request, ReadOnlyMemory<byte> payload)
    {
        var pin = payload.Pin();
        request.LendPayload(pin, Strand);
        return _splice!.SendAsync((byte*)pin.Pointer, payload.Length);
    }

    private async Task ShutdownSendAsync()
    {
        if (_stream is SslStream ssl)
            await ssl.ShutdownAsync().ConfigureAwait(false);
        _socket.Shutdown(SocketShutdown.Send);
    }

    /// <summary>The single reader: parses reply headers, routes each to its request by cookie, and
    /// copies READ data straight into the caller's buffer.</summary>
    private async Task ReadLoopAsync()
    {
        try
        {
            while (true)
            {
                if (!await _reader.FillAsync(NbdLimits.SimpleReplySize, CancellationToken.None).ConfigureAwait(false))
                {
                    if (_reader.Buffered != 0)
                        throw Protocol("the server closed the connection in the middle of a reply header");
                    OnEndOfStream();
                    return;
                }
                var parse = NbdWire.TryReadReplyHeader(_reader.Span, out var header);
                if (parse == NbdWire.ReplyParse.NeedMore)
                {
                    if (!await _reader.FillAsync(NbdLimits.StructuredReplyHeaderSize, CancellationToken.None).ConfigureAwait(false))
                        throw Protocol("the server closed the connection in the middle of a reply header");
                    parse = NbdWire.TryReadReplyHeader(_reader.Span, out header);
                }
                if (parse != NbdWire.ReplyParse.Ok)
                    throw Protocol($"invalid reply magic 0x{BinaryPrimitives.ReadUInt32BigEndian(_reader.Span):x8}; the stream is out of sync");
                _reader.Consume(header.Size);

                NbdRequest? request;
                lock (_lock)
                    _pending.TryGetValue(header.Cookie, out request);
                if (request is null)
                    throw Protocol($"reply for unknown cookie {header.Cookie}");

                if (header.Structured)
                    await ReadChunkAsync(request, header).ConfigureAwait(false);
                else
                    await ReadSimpleReplyAsync(request, header).ConfigureAwait(false);

                if (header.IsDone)
                    Complete(request);
            }
        }
        catch (Exception ex)
        {
            Fail(ex is NbdConnectionException ? ex : TransmissionError(ex, "receiving"));
        }
    }

    private void OnEndOfStream()
    {
        bool expected;
        lock (_lock)
            expected = _closing is not null && _pending.Count == 0;
        if (expected)
            return; // our DISC was answered by the close: FinishDisconnectAsync completes the rest
        var shutdown = Volatile.Read(ref _closing);
        throw shutdown is { Reason: NbdConnectionFailure.ServerShutdown }
            ? new NbdConnectionException(NbdConnectionFailure.ServerShutdown, NbdPhase.Transmission, "the server shut down the connection")
            : new NbdConnectionException(NbdConnectionFailure.ConnectionClosed, NbdPhase.Transmission, "the server closed the connection");
    }

    private async ValueTask ReadSimpleReplyAsync(NbdRequest request, NbdWire.ReplyHeader header)
    {
        if (header.Error != 0)
        {
            // An error reply never carries data, even for READ (trap 9).
            request.Error ??= CommandError(request, header.Error, null);
            return;
        }
        if (request.Command != NbdCommand.Read)
            return;
        if (_export.StructuredReplies)
            throw Protocol($"simple reply with data to READ cookie {header.Cookie}, but structured replies were negotiated");
        await ReceiveDataAsync(request, request.Offset, request.Length).ConfigureAwait(false);
        request.BytesSeen = request.Length;
    }

    private async ValueTask ReadChunkAsync(NbdRequest request, NbdWire.ReplyHeader header)
    {
        if (header.Length > NbdLimits.MaxChunkPayload)
            throw Protocol($"reply chunk of {header.Length} bytes is too long");
        switch (header.Type)
        {
            case NbdReplyChunkType.None:
                if (header.Length != 0 || !header.IsDone)
                    throw Protocol("NONE chunk with a payload or without the DONE flag");
                return;

            case NbdReplyChunkType.OffsetData:
            {
                if (request.Command != NbdCommand.Read || header.Length < 9)
                    throw Protocol($"unexpected OFFSET_DATA chunk of {header.Length} bytes for {request.Command}");
                var offset = await ReadUInt64Async().ConfigureAwait(false);
                var length = header.Length - 8;
                CheckInBounds(request, offset, length);
                await ReceiveDataAsync(request, (long)offset, length).ConfigureAwait(false);
                request.BytesSeen += length;
                return;
            }

            case NbdReplyChunkType.OffsetHole:
            {
                if (request.Command != NbdCommand.Read || header.Length != 12)
                    throw Protocol($"unexpected OFFSET_HOLE chunk of {header.Length} bytes for {request.Command}");
                await FillAsync(12).ConfigureAwait(false);
                var offset = BinaryPrimitives.ReadUInt64BigEndian(_reader.Span);
                var size = BinaryPrimitives.ReadUInt32BigEndian(_reader.Span[8..]);
                _reader.Consume(12);
                if (size == 0)
                    throw Protocol("OFFSET_HOLE chunk of size 0");
                CheckInBounds(request, offset, size);
                if (request.TryBeginReceive())
                {
                    request.Destination.Span.Slice((int)((long)offset - request.Offset), (int)size).Clear();
                    request.EndReceive();
                }
                request.BytesSeen += size;
                return;
            }

            case NbdReplyChunkType.BlockStatus:
            {
                if (request.Command != NbdCommand.BlockStatus)
                    throw Protocol($"unexpected BLOCK_STATUS chunk for {request.Command}");
                var payload = ArrayPool<byte>.Shared.Rent((int)header.Length);
                try
                {
                    await ReadExactAsync(payload.AsMemory(0, (int)header.Length)).ConfigureAwait(false);
                    var extents = new List<NbdExtent>();
                    if (!NbdWire.TryReadBlockStatus(payload.AsSpan(0, (int)header.Length), request.Offset, request.End, extents, out var contextId, out var error))
                        throw Protocol(error!);
                    request.Extents ??= [];
                    request.Extents[contextId] = extents; // ids we did not negotiate are simply never looked up
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(payload);
                }
                return;
            }

            default:
            {
                var type = (ushort)header.Type;
                if ((type & 0x8000) == 0)
                    throw Protocol($"unknown reply chunk type {type} (without the error bit: the client must disconnect)");
                // An error chunk (known or not). Its message is at most 4096 bytes; ERROR_OFFSET adds 8.
                if (header.Length < 6 || header.Length > 6 + NbdLimits.MaxString + 8)
                    throw Protocol($"error chunk with invalid length {header.Length}");
                var payload = new byte[header.Length];
                await ReadExactAsync(payload).ConfigureAwait(false);
                var hasOffset = header.Type == NbdReplyChunkType.ErrorOffset;
                if (!NbdWire.TryReadErrorChunk(payload, hasOffset, out var error, out var message))
                    throw Protocol("malformed error chunk");
                if (error == 0)
                    throw Protocol("error chunk with error value 0");
                // Keep the first error and keep reading until DONE (trap 10).
                request.Error ??= CommandError(request, error, message);
                return;
            }
        }
    }

    private static void CheckInBounds(NbdRequest request, ulong offset, uint length)
    {
        // libnbd structured_reply_in_bounds: a chunk outside its request means the server is broken.
        if (offset < (ulong)request.Offset || offset + length > (ulong)request.End)
            throw Protocol($"reply chunk [{offset}, +{length}) is outside its request [{request.Offset}, +{request.Length})");
    }

    private async ValueTask ReceiveDataAsync(NbdRequest request, long offset, uint length)
    {
        if (request.TryBeginReceive())
        {
            try
            {
                await ReadExactAsync(request.Destination.Slice((int)(offset - request.Offset), (int)length)).ConfigureAwait(false);
            }
            finally
            {
                request.EndReceive();
            }
        }
        else if (!await _reader.SkipAsync(length, CancellationToken.None).ConfigureAwait(false))
        {
            throw Protocol("the server closed the connection in the middle of a reply");
        }
    }

    private void Complete(NbdRequest request)
    {
        lock (_lock)
        {
            if (!_pending.Remove(request.Cookie))
                return; // the connection failed meanwhile and failed this request
            SignalDrainedIfIdle();
        }
        var error = request.Error;
        if (error is null && request.Command == NbdCommand.Read && _export.StructuredReplies && request.BytesSeen != request.Length)
        {
            // libnbd fails such a read with EPROTO: the server did not cover the whole range.
            error = new NbdCommandException(request.Command, request.Offset, request.Length, NbdErrorCode.EIO,
                $"the server's reply covered {request.BytesSeen} of {request.Length} bytes");
        }
        if (error is null && request.IsWriteLike)
            Interlocked.Increment(ref _writesAcknowledged);
        // Stop accepting requests before the caller learns of the ESHUTDOWN.
        if (error is NbdCommandException { Error: NbdErrorCode.ESHUTDOWN })
            OnServerShutdown();
        Release(request, error, sent: true);
        RecordMetrics(request);
        request.Finish(error, answered: true);
    }

    private void RecordMetrics(NbdRequest request)
    {
        var command = new KeyValuePair<string, object?>(NbdTelemetry.CommandTag, NbdTelemetry.CommandName(request.Command));
        if (NbdTelemetry.RequestDuration.Enabled)
            NbdTelemetry.RequestDuration.Record(_time.GetElapsedTime(request.StartTimestamp).TotalSeconds, command);
        if (NbdTelemetry.Bytes.Enabled && request.Command is not (NbdCommand.Flush or NbdCommand.BlockStatus or NbdCommand.Cache))
            NbdTelemetry.Bytes.Add(request.Length, command);
    }

    /// <summary>NBD_ESHUTDOWN: "If the client receives an NBD_ESHUTDOWN error it MUST initiate a soft
    /// disconnect." New requests are refused; pending ones finish; then DISC.</summary>
    private void OnServerShutdown()
    {
        if (Volatile.Read(ref _closing) is not null)
            return;
        Log.ServerShutdown(_logger, _endpointText);
        BeginClosing(new NbdConnectionException(NbdConnectionFailure.ServerShutdown, NbdPhase.Transmission, "the server is shutting down (ESHUTDOWN)"));
        using (ExecutionContext.SuppressFlow())
            _ = Task.Run(() => FinishDisconnectAsync(CancellationToken.None));
    }

    private static NbdCommandException CommandError(NbdRequest request, uint error, string? message) =>
        new(request.Command, request.Offset, request.Length, NbdErrors.FromWire(error), message);

    private async ValueTask<ulong> ReadUInt64Async()
    {
        await FillAsync(8).ConfigureAwait(false);
        var value = BinaryPrimitives.ReadUInt64BigEndian(_reader.Span);
        _reader.Consume(8);
        return value;
    }

    private async ValueTask FillAsync(int count)
    {
        if (!await _reader.FillAsync(count, CancellationToken.None).ConfigureAwait(false))
            throw Protocol("the server closed the connection in the middle of a reply");
    }

    private async ValueTask ReadExactAsync(Memory<byte> destination)
    {
        if (!await _reader.ReadExactAsync(destination, CancellationToken.None).ConfigureAwait(false))
            throw Protocol("the server closed the connection in the middle of a reply");
    }

    private static NbdConnectionException Protocol(string message) =>
        new(NbdConnectionFailure.ProtocolError, NbdPhase.Transmission, message);

    private NbdConnectionException TransmissionError(Exception ex, string doing)
    {
        if (Volatile.Read(ref _failure) is NbdConnectionException existing)
            return existing;
        return ex switch
        {
            IOException or SocketException or ObjectDisposedException =>
                new NbdConnectionException(NbdConnectionFailure.IOError, NbdPhase.Transmission, $"I/O error while {doing}: {ex.Message}", ex),
            _ => new NbdConnectionException(NbdConnectionFailure.ProtocolError, NbdPhase.Transmission, $"unexpected error while {doing}: {ex.Message}", ex),
        };
    }
}
