using System.Buffers;
using System.IO.Pipelines;
using NbdClient;
using NbdClient.Protocol;
using ImageioProxy.Tickets;

namespace ImageioProxy.DataPath;

/// <summary>The body of a PUT ended before Content-Length bytes (imageio's PartialContent).</summary>
public sealed class PartialContentException(long requested, long available)
    : Exception($"Requested {requested} bytes, available {available} bytes")
{
    public long Requested { get; } = requested;
    public long Available { get; } = available;
}

/// <summary>A chunked PUT body ran past the end of the ticket or the image.</summary>
public sealed class BodyTooLongException(long limit) : Exception($"The body goes past byte {limit}")
{
    public long Limit { get; } = limit;
}

/// <summary>The request body could not be read: Kestrel refused its framing (invalid chunked encoding)
/// or the client was too slow for Limits:MinRequestBodyDataRate. The client's fault, never a 500.</summary>
public sealed class InvalidBodyException(IOException inner) : Exception(inner.Message, inner)
{
    /// <summary>Kestrel's status for the fault (400, or 408 for a slow client); 400 otherwise.</summary>
    public int Status { get; } = inner is BadHttpRequestException bad ? bad.StatusCode : StatusCodes.Status400BadRequest;
}

/// <summary>The streaming data paths between an HTTP body and an <see cref="NbdPool"/>.</summary>
public static class Transfers
{
    /// <summary>PUT: reads the body into pooled chunk buffers and sends each full chunk at once with
    /// pool.WriteAsync, without awaiting it, while the next one is read. The budgets bound the bytes in
    /// flight, so a slow backend slows the client instead of growing memory. Returns once every write
    /// was acknowledged. A body that ends early writes nothing of its incomplete last chunk.</summary>
    /// <param name="length">Content-Length, or null for a chunked body.</param>
    /// <param name="limit">For chunked bodies: the offset the body may not cross.</param>
    public static async Task<long> UploadAsync(PipeReader body, NbdPool pool, long offset, long? length, long limit,
        ChunkBufferPool buffers, InFlightBudgets budgets, TicketOperation operation, CancellationToken cancellationToken)
    {
        var chunkSize = buffers.BufferSize;
        var pending = new List<Task>();
        long read = 0;
        try
        {
            while (length is null || read < length)
            {
                FailFast(pending);
                var want = (int)Math.Min(chunkSize, length is long total ? total - read : chunkSize);
                var taken = await budgets.AcquireAsync(want, cancellationToken);
                var buffer = buffers.Rent(want);
                int filled;
                try
                {
                    filled = await FillAsync(body, buffer.AsMemory(0, want), cancellationToken);
                }
                catch
                {
                    Recycle(buffers, buffer, taken, budgets);
                    throw;
                }
                if (length is not null && filled < want)
                {
                    // Content-Length promised more: the incomplete chunk is dropped, not written.
                    Recycle(buffers, buffer, taken, budgets);
                    throw new PartialContentException(length.Value, read + filled);
                }
                if (filled == 0)
                {
                    Recycle(buffers, buffer, taken, budgets);
                    break; // end of a chunked body
                }
                if (length is null && filled > limit - offset - read)
                {
                    Recycle(buffers, buffer, taken, budgets);
                    throw new BodyTooLongException(limit);
                }
                pending.Add(WriteChunkAsync(pool, offset + read, buffers, buffer, filled, taken, budgets, operation, cancellationToken));
                read += filled;
                if (length is null && filled < want)
                {
                    break; // a chunked body ended inside this chunk
                }
            }
        }
        finally
        {
            // Every write sent must be acknowledged (or failed) before we answer, whatever happened.
            await WhenAllSettled(pending);
        }
        await Task.WhenAll(pending); // rethrows the first failure
        return read;
    }

    /// <summary>GET: keeps up to <paramref name="readAhead"/> reads in flight and writes them to the
    /// response in order.</summary>
    public static async Task DownloadAsync(Stream output, NbdPool pool, long offset, long size, ChunkBufferPool buffers, int readAhead,
        InFlightBudgets budgets, TicketOperation operation, CancellationToken cancellationToken)
    {
        var chunkSize = buffers.BufferSize;
        var queue = new Queue<(Task Read, byte[] Buffer, int Length, (long, long) Taken)>();
        var next = offset;
        var end = offset + size;
        try
        {
            while (next < end || queue.Count > 0)
            {
                while (queue.Count < readAhead && next < end)
                {
                    var length = (int)Math.Min(chunkSize, end - next);
                    var taken = await budgets.AcquireAsync(length, cancellationToken);
                    var buffer = buffers.Rent(length);
                    queue.Enqueue((pool.ReadAsync(next, buffer.AsMemory(0, length), cancellationToken).AsTask(), buffer, length, taken));
                    next += length;
                }
                var item = queue.Peek();
                await item.Read;
                await output.WriteAsync(item.Buffer.AsMemory(0, item.Length), cancellationToken);
                queue.Dequeue();
                operation.AddDone(item.Length);
                Recycle(buffers, item.Buffer, item.Taken, budgets);
            }
        }
        finally
        {
            while (queue.TryDequeue(out var item))
            {
                await WhenAllSettled([item.Read]);
                // A canceled read may still be filling the buffer: let the GC have it.
                if (item.Read.IsCompletedSuccessfully)
                {
                    buffers.Return(item.Buffer);
                }
                budgets.Release(item.Taken);
            }
        }
    }

    /// <summary>PATCH zero: WRITE_ZEROES in steps of <paramref name="step"/>, several in flight. A
    /// sparse ticket lets the server punch holes; otherwise NO_HOLE keeps the range allocated. Servers
    /// without WRITE_ZEROES get zero-filled writes instead (imageio answers 500 there).</summary>
    public static async Task ZeroAsync(NbdPool pool, long offset, long size, bool sparse, long step, int chunkSize,
        TicketOperation operation, CancellationToken cancellationToken)
    {
        const int MaxInFlight = 8;
        var pending = new Queue<Task>();
        var canZero = pool.Export.CanWriteZeroes;
        var flags = sparse ? NbdCommandFlags.None : NbdCommandFlags.NoHole;
        var zeroes = canZero ? null : new byte[chunkSize];
        if (!canZero)
        {
            step = chunkSize;
        }
        try
        {
            for (var done = 0L; done < size;)
            {
                var length = Math.Min(step, size - done);
                var at = offset + done;
                var write = canZero
                    ? pool.WriteZeroesAsync(at, length, flags, cancellationToken).AsTask()
                    : pool.WriteAsync(at, zeroes.AsMemory(0, (int)length), NbdCommandFlags.None, cancellationToken).AsTask();
                pending.Enqueue(CountAsync(write, operation, length));
                done += length;
                if (pending.Count >= MaxInFlight)
                {
                    await pending.Dequeue();
                }
            }
        }
        finally
        {
            await WhenAllSettled(pending);
        }
        await Task.WhenAll(pending);
    }

    /// <summary>The flush barrier (every write acknowledged before it reaches stable storage), or just
    /// the drain when the server cannot flush: imageio then skips the flush silently.</summary>
    public static async Task FlushAsync(NbdPool pool, CancellationToken cancellationToken)
    {
        if (pool.Export.CanFlush)
        {
            await pool.FlushAsync(cancellationToken);
        }
        else
        {
            await pool.DrainAsync(cancellationToken);
        }
    }

    private static async Task CountAsync(Task write, TicketOperation operation, long length)
    {
        await write;
        operation.AddDone(length);
    }

    internal static async Task WriteChunkAsync(NbdPool pool, long offset, ChunkBufferPool buffers, byte[] buffer, int length, (long, long) taken,
        InFlightBudgets budgets, TicketOperation operation, CancellationToken cancellationToken)
    {
        try
        {
            await pool.WriteAsync(offset, buffer.AsMemory(0, length), NbdCommandFlags.None, cancellationToken);
            operation.AddDone(length);
            // Only now: on failure or cancellation the request may still reference the buffer.
            buffers.Return(buffer);
        }
        finally
        {
            budgets.Release(taken);
        }
    }

    /// <summary>Copies body bytes into <paramref name="buffer"/> until it is full or the body ends. Reading
    /// Kestrel's pipe directly takes everything it holds in one copy (up to the chunk), where a Stream read
    /// returns one socket receive (~64 KiB) per call.</summary>
    private static async ValueTask<int> FillAsync(PipeReader body, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var filled = 0;
        while (filled < buffer.Length)
        {
            var result = await ReadBodyAsync(body, cancellationToken);
            var data = result.Buffer;
            var take = (int)Math.Min(data.Length, buffer.Length - filled);
            data.Slice(0, take).CopyTo(buffer.Span[filled..]);
            filled += take;
            // Consumed and examined up to here: the rest (if any) is returned at once by the next read.
            body.AdvanceTo(data.GetPosition(take));
            if (result.IsCompleted && take == data.Length)
            {
                break; // the body ended
            }
        }
        return filled;
    }

    /// <summary>One read of the request body; Kestrel's faults become <see cref="InvalidBodyException"/>.</summary>
    internal static async ValueTask<ReadResult> ReadBodyAsync(PipeReader body, CancellationToken cancellationToken)
    {
        try
        {
            return await body.ReadAsync(cancellationToken);
        }
        catch (IOException e) when (!cancellationToken.IsCancellationRequested)
        {
            // Only the HTTP body is read here, so this is never an NBD failure. Kestrel throws a plain
            // IOException for some framing errors (a chunk size that overflows).
            throw new InvalidBodyException(e);
        }
    }

    internal static void FailFast(List<Task> pending)
    {
        foreach (var task in pending)
        {
            if (task.IsFaulted || task.IsCanceled)
            {
                task.GetAwaiter().GetResult(); // stop reading the body at the first failed write
            }
        }
        pending.RemoveAll(t => t.IsCompletedSuccessfully);
    }

    private static void Recycle(ChunkBufferPool buffers, byte[] buffer, (long, long) taken, InFlightBudgets budgets)
    {
        buffers.Return(buffer);
        budgets.Release(taken);
    }

    internal static async Task WhenAllSettled(IEnumerable<Task> tasks)
    {
        try
        {
            await Task.WhenAll(tasks);
        }
        catch
        {
            // Observed by the caller's own await.
        }
    }
}
