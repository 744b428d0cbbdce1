using System.Collections.Concurrent;

namespace ImageioProxy.DataPath;

/// <summary>The chunk buffers of GET and PUT, reused across requests. ArrayPool.Shared keeps only a few
/// arrays of each size per core, fewer than the chunks a PUT keeps in flight (64 MiB / 1 MiB), so most
/// rents used to allocate a fresh 1 MiB array on the LOH: the kernel zeroed its pages, the GC collected
/// it later, and RSS followed the garbage (docs/benchmarks.md). Here a buffer returns to a bag that
/// holds at most <see cref="MaxRetained"/> of them, the number the process-wide in-flight budget lets
/// exist at once, so steady state allocates nothing and RSS is bounded by that budget.</summary>
public sealed class ChunkBufferPool
{
    private readonly ConcurrentBag<byte[]> _free = [];
    private int _retained;

    public ChunkBufferPool(int bufferSize, long maxInFlightBytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(bufferSize, 1);
        BufferSize = bufferSize;
        MaxRetained = (int)Math.Clamp(maxInFlightBytes / bufferSize, 1, int.MaxValue);
    }

    public int BufferSize { get; }

    public int MaxRetained { get; }

    /// <summary>A buffer of at least <paramref name="length"/> bytes (exactly BufferSize when it fits).</summary>
    public byte[] Rent(int length)
    {
        if (length > BufferSize)
        {
            return GC.AllocateUninitializedArray<byte>(length);
        }
        if (_free.TryTake(out var buffer))
        {
            Interlocked.Decrement(ref _retained);
            return buffer;
        }
        // Pinned heap: no LOH compaction to think about, and sockets can use it without pinning.
        return GC.AllocateUninitializedArray<byte>(BufferSize, pinned: true);
    }

    /// <summary>Takes the buffer back. Only for buffers no I/O references any more: a canceled NBD
    /// request may still be filling its buffer, and such a buffer is left to the GC instead.</summary>
    public void Return(byte[] buffer)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        if (buffer.Length != BufferSize)
        {
            return;
        }
        if (Interlocked.Increment(ref _retained) <= MaxRetained)
        {
            _free.Add(buffer);
        }
        else
        {
            Interlocked.Decrement(ref _retained);
        }
    }
}
