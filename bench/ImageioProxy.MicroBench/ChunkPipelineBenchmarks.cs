using System.Buffers;
using BenchmarkDotNet.Attributes;
using ImageioProxy.DataPath;

namespace ImageioProxy.MicroBench;

/// <summary>The PUT path between Kestrel and NbdPool, without I/O: take in-flight budget, get a chunk
/// buffer, fill it from the request body's segments, give both back. A window of
/// <see cref="Window"/> chunks is outstanding, as the PUT keeps 32 MiB / 1 MiB in flight.</summary>
[MemoryDiagnoser]
public class ChunkPipelineBenchmarks
{
    private const int Chunk = 1 << 20;
    private const int Window = 32;
    private readonly ChunkBufferPool _pool = new(Chunk, 64L << 20);
    private readonly InFlightBudgets _budgets = new(new ByteBudget(32L << 20), new ByteBudget(64L << 20));
    private ReadOnlySequence<byte> _body;

    /// <summary>Kestrel's memory pool block: 4 KiB by default, 64 KiB with Http:PoolBlockSize.</summary>
    [Params(4096, 65536)]
    public int BlockSize { get; set; }

    [GlobalSetup]
    public void Setup() => _body = Segments.Build(Chunk, BlockSize);

    /// <summary>What Transfers.UploadAsync does per chunk, with the pooled buffers.</summary>
    [Benchmark(OperationsPerInvoke = Window)]
    public async Task<long> ChunkBufferPoolWindow()
    {
        var buffers = new byte[Window][];
        var taken = new (long, long)[Window];
        for (var i = 0; i < Window; i++)
        {
            taken[i] = await _budgets.AcquireAsync(Chunk, CancellationToken.None);
            buffers[i] = _pool.Rent(Chunk);
            _body.CopyTo(buffers[i]);
        }
        for (var i = 0; i < Window; i++)
        {
            _pool.Return(buffers[i]);
            _budgets.Release(taken[i]);
        }
        return buffers[0][0];
    }

    /// <summary>The same with ArrayPool.Shared, which the PUT path used before: past its per-core
    /// capacity, 1 MiB rents allocate.</summary>
    [Benchmark(Baseline = true, OperationsPerInvoke = Window)]
    public async Task<long> ArrayPoolWindow()
    {
        var buffers = new byte[Window][];
        var taken = new (long, long)[Window];
        for (var i = 0; i < Window; i++)
        {
            taken[i] = await _budgets.AcquireAsync(Chunk, CancellationToken.None);
            buffers[i] = ArrayPool<byte>.Shared.Rent(Chunk);
            _body.CopyTo(buffers[i]);
        }
        for (var i = 0; i < Window; i++)
        {
            ArrayPool<byte>.Shared.Return(buffers[i]);
            _budgets.Release(taken[i]);
        }
        return buffers[0][0];
    }
}

/// <summary>A request body as Kestrel hands it over: a chain of pool blocks.</summary>
internal sealed class Segments : ReadOnlySequenceSegment<byte>
{
    private Segments(ReadOnlyMemory<byte> memory, long runningIndex)
    {
        Memory = memory;
        RunningIndex = runningIndex;
    }

    public static ReadOnlySequence<byte> Build(int length, int blockSize)
    {
        var first = new Segments(new byte[Math.Min(blockSize, length)], 0);
        var last = first;
        for (var at = (long)blockSize; at < length; at += blockSize)
        {
            var next = new Segments(new byte[(int)Math.Min(blockSize, length - at)], at);
            last.Next = next;
            last = next;
        }
        return new ReadOnlySequence<byte>(first, 0, last, last.Memory.Length);
    }
}
