using System.Buffers;
using System.Collections.Concurrent;
using ImageioProxy.Configuration;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;

namespace ImageioProxy.Hosting;

/// <summary>The Kestrel settings that make bulk uploads cheap (docs/benchmarks.md). Shared with the
/// benchmark's bare sink so that the HTTP ceiling is measured with the same settings.</summary>
public static class KestrelTuning
{
    /// <summary>The runtime's switch for running socket continuations on its epoll threads.</summary>
    public const string InlineCompletionsVariable = "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS";

    /// <summary>Replaces the memory pool factory Kestrel takes from DI (.NET 10
    /// <see cref="IMemoryPoolFactory{T}"/>) when <see cref="HttpOptions.PoolBlockSize"/> is set.</summary>
    public static void AddServices(IServiceCollection services, HttpOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.PoolBlockSize > 0)
        {
            services.AddSingleton<IMemoryPoolFactory<byte>>(new LargeBlockMemoryPoolFactory(options.PoolBlockSize));
        }
        services.Configure<SocketTransportOptions>(socket =>
        {
            socket.UnsafePreferInlineScheduling = options.InlineScheduling;
            socket.WaitForDataBeforeAllocatingBuffer = options.WaitForDataBeforeAllocatingBuffer;
            // The socket transport's own pause threshold (its input pipe), which spliced uploads rely on:
            // the same number as Kestrel's MaxRequestBufferSize, whatever the two defaults are.
            socket.MaxReadBufferSize = options.MaxRequestBufferSize;
        });
    }

    public static void ApplyLimits(KestrelServerOptions kestrel, HttpOptions options)
    {
        ArgumentNullException.ThrowIfNull(kestrel);
        ArgumentNullException.ThrowIfNull(options);
        kestrel.Limits.MaxRequestBufferSize = options.MaxRequestBufferSize;
    }
}

/// <summary>Creates <see cref="LargeBlockMemoryPool"/>s; Kestrel creates one per transport.</summary>
public sealed class LargeBlockMemoryPoolFactory(int blockSize) : IMemoryPoolFactory<byte>
{
    public int BlockSize { get; } = blockSize;

    public MemoryPool<byte> Create(MemoryPoolOptions? options = null) => new LargeBlockMemoryPool(BlockSize);
}

/// <summary>A pool of pinned blocks larger than Kestrel's 4 KiB ones. Kestrel asks its pool for at least
/// half a block of free space before each socket receive (GetMinimumAllocSize), so with 4 KiB blocks a
/// 2 GiB upload is about a million receives; with 64 KiB blocks it is 16 times fewer, and TLS records
/// (16 KiB) are decrypted in fewer pieces. Blocks are pinned because the socket receives into them.
/// Returned blocks are kept up to <see cref="MaxRetainedBlocks"/>; beyond that they go to the GC, so a
/// burst of connections does not hold memory for ever.</summary>
public sealed class LargeBlockMemoryPool(int blockSize) : MemoryPool<byte>
{
    /// <summary>64 MiB of 64 KiB blocks: 8 connections × Kestrel's 1 MiB request buffer, plus responses.</summary>
    public const int MaxRetainedBytes = 64 * 1024 * 1024;

    private readonly ConcurrentBag<Block> _free = [];
    private int _disposed;

    public int MaxRetainedBlocks { get; } = Math.Max(16, MaxRetainedBytes / blockSize);

    public override int MaxBufferSize { get; } = blockSize;

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(minBufferSize, MaxBufferSize);
        return _free.TryTake(out var block) ? block : new Block(this, GC.AllocateUninitializedArray<byte>(MaxBufferSize, pinned: true));
    }

    protected override void Dispose(bool disposing)
    {
        Interlocked.Exchange(ref _disposed, 1);
        _free.Clear();
    }

    private void Return(Block block)
    {
        if (Volatile.Read(ref _disposed) == 0 && _free.Count < MaxRetainedBlocks)
        {
            _free.Add(block);
        }
    }

    private sealed class Block(LargeBlockMemoryPool pool, byte[] array) : IMemoryOwner<byte>
    {
        public Memory<byte> Memory { get; } = array;

        public void Dispose() => pool.Return(this);
    }
}
