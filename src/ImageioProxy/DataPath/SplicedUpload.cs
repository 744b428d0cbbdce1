using System.Buffers;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net.Sockets;
using ImageioProxy.Hosting;
using ImageioProxy.Tickets;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using NbdClient;
using NbdClient.Protocol;

namespace ImageioProxy.DataPath;

/// <summary>PUT without copying the body (Linux; plain HTTP with Http:SpliceUploads, the unix socket with Http:SpliceLocalUploads): the
/// bytes go from the client's socket into a pipe and from the pipe into qemu-nbd's socket by splice(2),
/// so this process never touches them (docs/benchmarks.md, fifth round).
/// How it gets the socket to itself: it reads the body through Kestrel until Kestrel holds its pause
/// threshold (Http:MaxRequestBufferSize) unconsumed, at which point Kestrel's receive loop waits for the
/// request to consume some and does not read the socket. Those buffered bytes are written as usual; the
/// rest of the body is spliced from the socket; then Kestrel is told to count the spliced bytes as read
/// (<see cref="IBodySpliceFeature.Skip"/>) and resumes with the next request on the connection.</summary>
public static class SplicedUpload
{
    /// <summary>NBD requests end on multiples of this (relative to the image), so qemu-nbd with
    /// --cache=none never has to read-modify-write a block because a piece of the body ended mid-block.</summary>
    private const int Alignment = 4096;

    /// <summary>SO_RCVLOWAT while waiting for the body: the kernel wakes the proxy once this much is queued
    /// (or less, when the body owes less) rather than for every segment (docs/benchmarks.md, fifth round).</summary>
    private const int LowWater = 256 * 1024;

    private static readonly TimeSpan MaxWait = TimeSpan.FromMinutes(1);
    private static readonly TimeSpan MinPoll = TimeSpan.FromMilliseconds(1);
    private static readonly TimeSpan MaxPoll = TimeSpan.FromMilliseconds(50);

    /// <summary>Whether a body of <paramref name="length"/> bytes is worth splicing: at least one whole
    /// chunk must remain in the socket once Kestrel has buffered its threshold.</summary>
    public static bool IsWorthIt(long length, long pauseThreshold, int chunkSize) => length >= pauseThreshold + 2L * chunkSize;

    /// <summary>Uploads a Content-Length body of <paramref name="length"/> bytes at <paramref name="offset"/>.
    /// Falls back to <see cref="Transfers.UploadAsync"/> when the whole body arrived before the threshold,
    /// or when no pipe can be had. Throws what that path throws for the same faults
    /// (<see cref="PartialContentException"/>, <see cref="InvalidBodyException"/>).</summary>
    public static async Task<long> UploadAsync(PipeReader body, IBodySpliceFeature connection, long pauseThreshold, MinDataRate? minRate,
        TimeProvider time, NbdPool pool, long offset, long length, ChunkBufferPool buffers, SplicePipePool pipes,
        InFlightBudgets budgets, TicketOperation operation, Action<long> spliced, CancellationToken cancellationToken)
    {
        var pending = new List<Task>();
        try
        {
            return await UploadAsync(body, connection, pauseThreshold, minRate, time, pool, offset, length, buffers, pipes, budgets,
                operation, spliced, pending, cancellationToken);
        }
        finally
        {
            // Every write sent is acknowledged (or failed) before the request is answered, whatever happened.
            await Transfers.WhenAllSettled(pending);
        }
    }

    private static async Task<long> UploadAsync(PipeReader body, IBodySpliceFeature connection, long pauseThreshold, MinDataRate? minRate,
        TimeProvider time, NbdPool pool, long offset, long length, ChunkBufferPool buffers, SplicePipePool pipes,
        InFlightBudgets budgets, TicketOperation operation, Action<long> spliced, List<Task> pending, CancellationToken cancellationToken)
    {
        // 1. Make sure Kestrel's receive loop waits. A pipe's back-pressure counts the bytes its reader has not
        // examined: the writer pauses when that count reaches the threshold (Http:MaxRequestBufferSize) and
        // resumes only when it falls below half of it. Examining everything seen so far resumes the loop if it
        // was paused (as it can be with the request's headers still counted); once a whole threshold has
        // arrived beyond that mark with nothing examined since, it has paused again and stays paused until
        // the request examines more. Kestrel may also pause between the first read and the mark, leaving the
        // bytes past it counted: when nothing arrives during a poll, the mark moves up to everything seen.
        // Hence polling with TryRead: a read returns at once while unexamined bytes wait, so awaiting reads
        // would spin. "Examined" never moves back (the pipe throws), so every later AdvanceTo passes the mark.
        var result = await Transfers.ReadBodyAsync(body, cancellationToken);
        var started = time.GetTimestamp();
        var poll = MinPoll;
        var marked = result.Buffer.Length;
        var observed = -1L;
        var seen = marked;
        var lastProgress = started;
        long written = 0; // body bytes already sent, as copies, from its start
        while (true)
        {
            if (result.Buffer.Length >= length || result.IsCompleted)
            {
                // All there (or cut short): the usual path does the rest.
                return await CopyRestAsync(result, written, marked);
            }
            // Whole chunks go out as they arrive, as on the usual path (progress shows; a stalled client's data
            // is not held back). Copying them examines nothing.
            try
            {
                written = await WriteCopiesAsync(result.Buffer, written, AlignDown(result.Buffer.Length, buffers.BufferSize), pool, offset,
                    buffers, budgets, operation, pending, cancellationToken);
            }
            catch
            {
                body.AdvanceTo(result.Buffer.Start, result.Buffer.GetPosition(marked)); // no read left open
                throw;
            }
            if (result.Buffer.Length - marked >= pauseThreshold)
            {
                break;
            }
            if (result.Buffer.Length == observed)
            {
                // Nothing arrived during the last poll. Kestrel may have paused before the mark was set, with
                // bytes past the mark still counted but fewer than a threshold: it would not resume. Examining
                // everything again lifts such a pause (and costs nothing when the client is merely slow).
                marked = result.Buffer.Length;
            }
            observed = result.Buffer.Length;
            // The first time round this examines everything seen so far (the mark), later nothing more.
            body.AdvanceTo(result.Buffer.Start, result.Buffer.GetPosition(marked));
            Transfers.FailFast(pending);
            if (result.Buffer.Length > seen)
            {
                seen = result.Buffer.Length;
                lastProgress = time.GetTimestamp();
            }
            else if (minRate is not null && time.GetElapsedTime(lastProgress) > minRate.GracePeriod)
            {
                // Kestrel's rule counts only time spent waiting on a read, and this polling is not one: a
                // client that sends nothing for the grace period is too slow.
                throw TooSlow();
            }
            await Task.Delay(poll, time, cancellationToken);
            poll = poll * 2 < MaxPoll ? poll * 2 : MaxPoll;
            if (!body.TryRead(out result))
            {
                // Nothing unexamined: wait for more, under Kestrel's own Limits:MinRequestBodyDataRate.
                result = await Transfers.ReadBodyAsync(body, cancellationToken);
            }
        }
        var staging = pipes.Rent();
        if (staging is null)
        {
            return await CopyRestAsync(result, written, marked);
        }

        var head = result.Buffer;
        ReceiveLowWater? lowWater = null;
        long fromSocket = 0;
        var succeeded = false;
        try
        {
            // 2. What Kestrel holds goes as usual, up to a block boundary; the rest of that block starts the first pipe.
            var alignment = Math.Max(Alignment, pool.Export.MinimumBlockSize);
            var copied = Math.Max(written, AlignDown(offset + head.Length, alignment) - offset);
            await WriteCopiesAsync(head, written, copied, pool, offset, buffers, budgets, operation, pending, cancellationToken);
            var tail = head.Slice(copied);
            staging.Write(tail.IsSingleSegment ? tail.FirstSpan : tail.ToArray());

            // 3. The rest comes from the socket, a chunk per pipe, each sent as one write (the pool cuts it into
            // Backend:SpliceRequestSize requests, back to back on one connection).
            var chunkSize = Math.Min(buffers.BufferSize, staging.Capacity);
            var socket = connection.Socket;
            var end = offset + length;
            var position = offset + copied; // where the staging pipe's first byte goes
            lowWater = new ReceiveLowWater(socket);
            while (position < end)
            {
                Transfers.FailFast(pending);
                // Chunks end on multiples of the chunk size, as on the usual path: a chunk goes out as soon as
                // the client has sent its last byte (progress, and a client that pauses mid-body).
                var target = Math.Min(end, AlignDown(position + chunkSize, chunkSize));
                var taken = await budgets.AcquireAsync((int)(target - position), cancellationToken);
                try
                {
                    while (position + staging.Length < target)
                    {
                        var moved = staging.SpliceFrom(socket, (int)(target - position - staging.Length));
                        if (moved > 0)
                        {
                            fromSocket += moved;
                            continue;
                        }
                        if (moved == 0)
                        {
                            throw new PartialContentException(length, position + staging.Length - offset);
                        }
                        if (socket.Available > 0)
                        {
                            break; // the socket has data but the pipe took none: its slots are full
                        }
                        lowWater.Set(Math.Min(LowWater, (int)(target - position - staging.Length)));
                        await WaitForDataAsync(socket, minRate, head.Length + fromSocket, started, time, cancellationToken);
                    }
                }
                catch (SocketException e)
                {
                    budgets.Release(taken);
                    throw new InvalidBodyException(new IOException($"Reading the request body failed: {e.Message}", e));
                }
                catch
                {
                    budgets.Release(taken);
                    throw;
                }
                var chunkLength = staging.Length;
                if (position + chunkLength < end && AlignDown(position + chunkLength, alignment) > position)
                {
                    chunkLength = (int)(AlignDown(position + chunkLength, alignment) - position);
                }
                SplicePipe? next;
                try
                {
                    next = await RentAsync(pipes, pending);
                }
                catch
                {
                    budgets.Release(taken);
                    throw;
                }
                SplicePipe chunk;
                if (chunkLength == staging.Length)
                {
                    chunk = staging;
                    staging = next;
                }
                else
                {
                    chunk = next;
                    staging.MoveTo(chunk, chunkLength);
                }
                pending.Add(WritePipeAsync(pool, position, chunk, pipes, taken, budgets, operation, cancellationToken));
                position += chunkLength;
            }
            // Kestrel must not have read the socket meanwhile (its receive loop was paused): if it had, the bytes
            // spliced would not all be this body's, and the request must fail rather than answer 200.
            body.AdvanceTo(head.Start, head.GetPosition(marked));
            var again = body.TryRead(out result); // at once: the head is still there, unconsumed
            var extra = again ? result.Buffer.Length - head.Length : -head.Length;
            if (again)
            {
                head = result.Buffer;
            }
            if (extra != 0)
            {
                throw new InvalidOperationException($"Kestrel's buffer changed by {extra} bytes during a spliced upload");
            }
            succeeded = true;
        }
        finally
        {
            spliced(fromSocket);
            lowWater?.Reset(); // before Kestrel reads the socket again
            pipes.Return(staging);
            await Transfers.WhenAllSettled(pending);
            if (succeeded)
            {
                // 4. Kestrel counts the bytes taken from its socket as read, and resumes.
                connection.Skip(length - head.Length);
                body.AdvanceTo(head.End);
                await SkipRestAsync(body, length - head.Length);
            }
            else
            {
                // Kestrel must not read the socket again: it may hold the rest of this body, or the client's
                // FIN, which would abort the request before the error response is out. Examining nothing
                // beyond the mark keeps its receive loop waiting; the error response closes the connection
                // (the request's body is not marked read).
                body.AdvanceTo(head.Start, head.GetPosition(marked));
            }
        }
        await Task.WhenAll(pending); // rethrows the first failure
        return length;

        // Gives up splicing: the usual path takes the body from the first byte not yet written.
        async Task<long> CopyRestAsync(ReadResult buffered, long done, long mark)
        {
            body.AdvanceTo(buffered.Buffer.GetPosition(done), buffered.Buffer.GetPosition(Math.Max(mark, done)));
            var rest = await Transfers.UploadAsync(body, pool, offset + done, length - done, offset + length, buffers, budgets, operation, cancellationToken);
            await Task.WhenAll(pending);
            return done + rest;
        }
    }

    /// <summary>Writes bytes [from, to) of the buffered body as copies, in chunks; returns <paramref name="to"/>.</summary>
    private static async Task<long> WriteCopiesAsync(ReadOnlySequence<byte> data, long from, long to, NbdPool pool, long offset,
        ChunkBufferPool buffers, InFlightBudgets budgets, TicketOperation operation, List<Task> pending, CancellationToken cancellationToken)
    {
        var chunkSize = buffers.BufferSize;
        for (var at = from; at < to; at += chunkSize)
        {
            var length = (int)Math.Min(chunkSize, to - at);
            var taken = await budgets.AcquireAsync(length, cancellationToken);
            var buffer = buffers.Rent(length);
            data.Slice(at, length).CopyTo(buffer);
            pending.Add(Transfers.WriteChunkAsync(pool, offset + at, buffers, buffer, length, taken, budgets, operation, cancellationToken));
        }
        return Math.Max(from, to);
    }

    private static async Task WritePipeAsync(NbdPool pool, long offset, SplicePipe chunk, SplicePipePool pipes, (long, long) taken,
        InFlightBudgets budgets, TicketOperation operation, CancellationToken cancellationToken)
    {
        var length = chunk.Length;
        try
        {
            await pool.WriteAsync(offset, chunk, NbdCommandFlags.None, cancellationToken);
            operation.AddDone(length);
        }
        finally
        {
            pipes.Return(chunk); // one that still holds data after a failure is closed, not reused
            budgets.Release(taken);
        }
    }

    /// <summary>Waits until the socket has data. Kestrel's Limits:MinRequestBodyDataRate applies as it does to
    /// Kestrel's own reads: after the grace period, a client whose average rate falls below it gets 408.</summary>
    private static async Task WaitForDataAsync(Socket socket, MinDataRate? minRate, long received, long started, TimeProvider time,
        CancellationToken cancellationToken)
    {
        if (minRate is null)
        {
            await socket.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, cancellationToken);
            return;
        }
        while (true)
        {
            var left = CheckRate(minRate, received, started, time);
            // At most a minute per wait: what a fast upload earns at 240 B/s is far beyond a timer's range.
            using var timeout = new CancellationTokenSource(left < MaxWait ? left : MaxWait, time);
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
            try
            {
                // A zero-byte receive waits for data without taking any (the runtime peeks).
                await socket.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, linked.Token);
                return;
            }
            catch (OperationCanceledException) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
            {
                // The deadline, or a minute, passed: check again.
            }
        }
    }

    /// <summary>Kestrel's rule for Limits:MinRequestBodyDataRate: after the grace period the average rate since
    /// <paramref name="started"/> must reach the minimum. Returns how long the client may still send nothing.</summary>
    private static TimeSpan CheckRate(MinDataRate? minRate, long received, long started, TimeProvider time)
    {
        if (minRate is null)
        {
            return Timeout.InfiniteTimeSpan;
        }
        var allowed = TimeSpan.FromSeconds(Math.Max(minRate.GracePeriod.TotalSeconds, received / minRate.BytesPerSecond));
        var left = allowed - time.GetElapsedTime(started);
        return left > TimeSpan.Zero ? left : throw TooSlow();
    }

    /// <summary>Reads the placeholders off Kestrel's body reader, which then has its whole body.</summary>
    private static async Task SkipRestAsync(PipeReader body, long count)
    {
        for (long skipped = 0; skipped < count;)
        {
            var result = await body.ReadAsync();
            skipped += result.Buffer.Length;
            body.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted || result.IsCanceled)
            {
                break;
            }
        }
    }

    private static InvalidBodyException TooSlow() => new(new Microsoft.AspNetCore.Http.BadHttpRequestException(
        "Reading the request body timed out due to data arriving too slowly (Limits:MinRequestBodyDataRate)", StatusCodes.Status408RequestTimeout));

    /// <summary>A pipe, waiting for a write of this upload to give its pipe back when none can be made (the
    /// user is past fs.pipe-user-pages-soft, or out of descriptors).</summary>
    private static async Task<SplicePipe> RentAsync(SplicePipePool pipes, List<Task> pending)
    {
        while (true)
        {
            if (pipes.Rent() is { } pipe)
            {
                return pipe;
            }
            var writing = pending.Where(t => !t.IsCompleted).ToList();
            if (writing.Count == 0)
            {
                throw new IOException("No pipe could be made for a spliced upload (fs.pipe-user-pages-soft, or out of file descriptors)");
            }
            await Task.WhenAny(writing);
        }
    }

    private static long AlignDown(long value, int alignment) => value - (value % alignment);
}

/// <summary>The socket's SO_RCVLOWAT, set only when it changes, and put back to 1 (the default, which Kestrel
/// expects) by <see cref="Reset"/>. Where the socket refuses it (not TCP), it stays as it was.</summary>
internal sealed class ReceiveLowWater(Socket socket)
{
    private int _current = 1;
    private bool _refused;

    public void Set(int bytes)
    {
        bytes = Math.Max(1, bytes);
        if (_refused || bytes == _current)
        {
            return;
        }
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReceiveLowWater, bytes);
            _current = bytes;
        }
        catch (SocketException)
        {
            _refused = true; // unix sockets: every wake-up then comes with whatever arrived
        }
    }

    public void Reset()
    {
        try
        {
            Set(1);
        }
        catch (ObjectDisposedException)
        {
            // The connection is gone; nobody reads the socket again.
        }
    }
}

/// <summary>Reusable pipes for <see cref="SplicedUpload"/>, each holding one chunk. Pipes count against
/// the user's pipe-user-pages-soft (64 MiB of pipes by default, unless the process has CAP_SYS_RESOURCE),
/// so at most <paramref name="maxRetained"/> idle ones are kept.</summary>
public sealed class SplicePipePool(int pipeSize, int maxRetained) : IDisposable
{
    /// <summary>A pipe granted less than this (the user is past pipe-user-pages-soft, or pipe-max-size is
    /// set lower) is not used: the upload falls back to copying rather than send tiny requests.</summary>
    public const int MinimumPipeSize = 256 * 1024;

    private readonly ConcurrentBag<SplicePipe> _free = [];
    private int _disposed;

    public int PipeSize { get; } = pipeSize;

    /// <summary>An empty pipe, or null when none can be made.</summary>
    public SplicePipe? Rent()
    {
        if (_free.TryTake(out var pipe))
        {
            return pipe;
        }
        pipe = SplicePipe.TryCreate(PipeSize);
        if (pipe is not null && pipe.Capacity < Math.Min(PipeSize, MinimumPipeSize))
        {
            pipe.Dispose();
            return null;
        }
        return pipe;
    }

    public void Return(SplicePipe pipe)
    {
        ArgumentNullException.ThrowIfNull(pipe);
        if (pipe.Length != 0 || Volatile.Read(ref _disposed) != 0 || _free.Count >= maxRetained)
        {
            pipe.Dispose();
            return;
        }
        _free.Add(pipe);
    }

    public void Dispose()
    {
        Interlocked.Exchange(ref _disposed, 1);
        while (_free.TryTake(out var pipe))
        {
            pipe.Dispose();
        }
    }
}
