using System.Collections.Concurrent;
using ImageioProxy.Checksums;
using NbdClient;

namespace ImageioProxy.Tests.Checksums;

/// <summary>An image in memory that records what was read and asked.</summary>
internal sealed class InMemoryChecksumSource(byte[] image, IReadOnlyList<NbdExtent> extents) : IChecksumSource
{
    private int _readsInFlight;
    private int _maxReadsInFlight;

    public ConcurrentQueue<(long Offset, int Length)> Reads { get; } = new();

    public ConcurrentQueue<(long Offset, long Length)> ExtentQueries { get; } = new();

    public int MaxReadsInFlight => Volatile.Read(ref _maxReadsInFlight);

    /// <summary>Called inside every read before the data is copied; lets a test hold reads.</summary>
    public Func<long, Task>? BeforeRead { get; init; }

    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct)
    {
        Reads.Enqueue((offset, buffer.Length));
        var inFlight = Interlocked.Increment(ref _readsInFlight);
        InterlockedMax(ref _maxReadsInFlight, inFlight);
        try
        {
            if (BeforeRead is { } beforeRead)
            {
                await beforeRead(offset).WaitAsync(ct);
            }

            image.AsMemory((int)offset, buffer.Length).CopyTo(buffer);
        }
        finally
        {
            Interlocked.Decrement(ref _readsInFlight);
        }
    }

    public ValueTask<IReadOnlyList<NbdExtent>> GetExtentsAsync(long offset, long length, CancellationToken ct)
    {
        ExtentQueries.Enqueue((offset, length));
        var end = offset + length;
        // Clipped to the request like NbdConnection.GetExtentsAsync does.
        IReadOnlyList<NbdExtent> clipped = [.. extents
            .Where(e => e.End > offset && e.Offset < end)
            .Select(e => new NbdExtent(Math.Max(e.Offset, offset), Math.Min(e.End, end) - Math.Max(e.Offset, offset), e.Flags))];
        return ValueTask.FromResult(clipped);
    }

    private static void InterlockedMax(ref int location, int value)
    {
        var current = Volatile.Read(ref location);
        while (value > current)
        {
            var seen = Interlocked.CompareExchange(ref location, value, current);
            if (seen == current)
            {
                return;
            }

            current = seen;
        }
    }
}
