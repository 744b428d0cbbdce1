using System.Buffers;
using System.Security.Cryptography;
using NbdClient;

namespace ImageioProxy.Checksums;

/// <summary>
/// imageio's block checksum (<c>ovirt_imageio/_internal/blkhash.py</c>, served at
/// <c>/images/{id}/checksum</c>): split the image into <c>blockSize</c> blocks (the last one may be shorter),
/// hash every block, and hash the concatenated block digests: <c>H(H(b1) + H(b2) + ...)</c>.
/// </summary>
/// <remarks>
/// <para>Digests are byte-for-byte those of imageio (tests hold vectors produced by imageio itself):</para>
/// <list type="bullet">
/// <item>blake2b (and blake2s in imageio) is used with <c>digest_size=32</c> for both the block and the outer
/// hash; every other algorithm uses hashlib's default parameters.</item>
/// <item>A zero block's digest is just the digest of that many zero bytes. Blocks are known to be zero from
/// base:allocation extents (then they are not read at all) or by scanning the data that was read; both only
/// save work and never change the result.</item>
/// <item>Blocks always start at multiples of the block size: imageio's <c>blkhash.split</c> merges smaller
/// extents into whole blocks, so a block is zero only when all of it is zero.</item>
/// </list>
/// </remarks>
public static class BlockHash
{
    /// <summary>imageio's default algorithm (<c>blkhash.ALGORITHM</c>).</summary>
    public const string DefaultAlgorithm = "blake2b";

    /// <summary>imageio's default block size (<c>blkhash.BLOCK_SIZE</c>, 4 MiB).</summary>
    public const int DefaultBlockSize = 4 * 1024 * 1024;

    /// <summary>Data blocks read ahead of the one being hashed. The source is a pipelined NBD pool, so a few
    /// reads in flight hide its latency, and hashing them in parallel uses more than one core.</summary>
    public const int DefaultReadsInFlight = 4;

    // Extents are asked for in windows of this many blocks (2 GiB at 4 MiB, imageio's block-status step),
    // so a huge sparse image never needs all its extents in memory.
    private const int BlocksPerExtentsWindow = 512;

    private static readonly Dictionary<string, BlockHashAlgorithm> AlgorithmsByName = CreateAlgorithms();

    /// <summary>Supported algorithm names, sorted, as <c>/checksum/algorithms</c> lists them. The names are
    /// Python hashlib's; imageio lists everything hashlib has, we list what we can compute identically.</summary>
    public static IReadOnlyList<string> Algorithms { get; } =
        [.. AlgorithmsByName.Keys.Order(StringComparer.Ordinal)];

    /// <summary>True when <paramref name="algorithm"/> is one of <see cref="Algorithms"/> (case-sensitive,
    /// like imageio's <c>validate.enum</c>).</summary>
    public static bool IsSupported(string algorithm) =>
        algorithm is not null && AlgorithmsByName.ContainsKey(algorithm);

    /// <summary>Computes the checksum of the first <paramref name="size"/> bytes of <paramref name="source"/>
    /// and returns it as lower-case hex.</summary>
    public static Task<string> ComputeAsync(IChecksumSource source, long size, string algorithm, int blockSize, CancellationToken ct) =>
        ComputeAsync(source, size, algorithm, blockSize, DefaultReadsInFlight, ct);

    /// <summary>As <see cref="ComputeAsync(IChecksumSource, long, string, int, CancellationToken)"/>, with at
    /// most <paramref name="readsInFlight"/> data blocks read ahead.</summary>
    public static async Task<string> ComputeAsync(IChecksumSource source, long size, string algorithm, int blockSize, int readsInFlight, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(readsInFlight);
        if (!AlgorithmsByName.TryGetValue(algorithm, out var hashAlgorithm))
        {
            throw new ArgumentException($"Unsupported checksum algorithm '{algorithm}'", nameof(algorithm));
        }

        using var outer = hashAlgorithm.CreateOuterHash();
        // Block digests in image order. Data blocks are still being read and hashed; zero blocks queue
        // behind them so that the outer hash sees every digest in order.
        var pending = new Queue<PendingDigest>();
        var readsPending = 0;

        try
        {
            var windowLength = (long)blockSize * BlocksPerExtentsWindow;
            for (long windowStart = 0; windowStart < size; windowStart += windowLength)
            {
                var windowEnd = Math.Min(size, windowStart + windowLength);
                var extents = await source.GetExtentsAsync(windowStart, windowEnd - windowStart, ct);
                var zeroRanges = new ZeroRanges(extents);

                for (var blockStart = windowStart; blockStart < windowEnd; blockStart += blockSize)
                {
                    var blockLength = (int)Math.Min(blockSize, windowEnd - blockStart);
                    if (zeroRanges.Covers(blockStart, blockLength))
                    {
                        var zeroDigest = hashAlgorithm.ZeroDigest(blockLength);
                        if (pending.Count == 0)
                        {
                            outer.Append(zeroDigest);
                        }
                        else
                        {
                            pending.Enqueue(new PendingDigest(null, zeroDigest));
                        }

                        continue;
                    }

                    pending.Enqueue(new PendingDigest(ReadAndHashBlockAsync(source, hashAlgorithm, blockStart, blockLength, ct), null));
                    readsPending++;

                    // Keep at most readsInFlight reads going; wait for the oldest one, not any one.
                    while (readsPending >= readsInFlight)
                    {
                        if (await AppendOldestAsync(pending, outer))
                        {
                            readsPending--;
                        }
                    }
                }
            }

            while (pending.Count > 0)
            {
                await AppendOldestAsync(pending, outer);
            }

            var digest = new byte[hashAlgorithm.DigestSize];
            outer.Finish(digest);
            return Convert.ToHexStringLower(digest);
        }
        finally
        {
            // On failure, do not return while reads are still running against a source the caller is about
            // to release. Their own errors are secondary to the one already propagating.
            foreach (var entry in pending)
            {
                if (entry.Read is { } read)
                {
                    try
                    {
                        await read;
                    }
                    catch
                    {
                    }
                }
            }
        }
    }

    /// <summary>Appends the oldest pending digest to the outer hash; true if it came from a read.</summary>
    private static async ValueTask<bool> AppendOldestAsync(Queue<PendingDigest> pending, IOuterHash outer)
    {
        var oldest = pending.Peek();
        // Dequeue only after the read finished, so that a failed read is still awaited by the cleanup.
        var digest = oldest.Read is { } read ? await read : oldest.ZeroDigest!;
        pending.Dequeue();
        outer.Append(digest);
        return oldest.Read is not null;
    }

    /// <summary>A block's digest: being computed from a read, or already known because the block is zero.</summary>
    private readonly record struct PendingDigest(Task<byte[]>? Read, byte[]? ZeroDigest);

    private static async Task<byte[]> ReadAndHashBlockAsync(IChecksumSource source, BlockHashAlgorithm algorithm, long offset, int length, CancellationToken ct)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            await source.ReadAsync(offset, buffer.AsMemory(0, length), ct);

            // The read may complete on the NBD connection's reader loop; hashing megabytes there would stall
            // every other request on that connection. Continue on the thread pool instead (no
            // SynchronizationContext in the service), which also hashes blocks in flight in parallel.
            await Task.Yield();
            ct.ThrowIfCancellationRequested();

            var block = buffer.AsSpan(0, length);
            // Vectorised scan: preallocated or zero-written data costs a memory pass instead of a hash.
            if (!block.ContainsAnyExcept((byte)0))
            {
                return algorithm.ZeroDigest(length);
            }

            var digest = new byte[algorithm.DigestSize];
            algorithm.HashData(block, digest);
            return digest;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static Dictionary<string, BlockHashAlgorithm> CreateAlgorithms()
    {
        var algorithms = new List<BlockHashAlgorithm>
        {
            new Blake2bBlockHashAlgorithm(),
            new BclBlockHashAlgorithm("md5", HashAlgorithmName.MD5, MD5.HashSizeInBytes),
            new BclBlockHashAlgorithm("sha1", HashAlgorithmName.SHA1, SHA1.HashSizeInBytes),
            new BclBlockHashAlgorithm("sha256", HashAlgorithmName.SHA256, SHA256.HashSizeInBytes),
            new BclBlockHashAlgorithm("sha384", HashAlgorithmName.SHA384, SHA384.HashSizeInBytes),
            new BclBlockHashAlgorithm("sha512", HashAlgorithmName.SHA512, SHA512.HashSizeInBytes),
        };

        // SHA-3 depends on the platform's OpenSSL (1.1.1+); list it only where it works.
        if (SHA3_256.IsSupported)
        {
            algorithms.Add(new BclBlockHashAlgorithm("sha3_256", HashAlgorithmName.SHA3_256, SHA3_256.HashSizeInBytes));
        }

        if (SHA3_384.IsSupported)
        {
            algorithms.Add(new BclBlockHashAlgorithm("sha3_384", HashAlgorithmName.SHA3_384, SHA3_384.HashSizeInBytes));
        }

        if (SHA3_512.IsSupported)
        {
            algorithms.Add(new BclBlockHashAlgorithm("sha3_512", HashAlgorithmName.SHA3_512, SHA3_512.HashSizeInBytes));
        }

        return algorithms.ToDictionary(a => a.Name, StringComparer.Ordinal);
    }

    /// <summary>The zero ranges of one extents reply, queried with increasing offsets.</summary>
    private struct ZeroRanges(IReadOnlyList<NbdExtent> extents)
    {
        private int _index;

        /// <summary>True when every byte of [offset, offset+length) lies in extents flagged zero. Gaps in the
        /// reply, or extents out of order, make the block count as data: reading it is always correct.</summary>
        public bool Covers(long offset, long length)
        {
            var end = offset + length;
            // Skip extents that end before this block; blocks only move forward.
            while (_index < extents.Count && extents[_index].End <= offset)
            {
                _index++;
            }

            var position = offset;
            for (var i = _index; i < extents.Count && position < end; i++)
            {
                var extent = extents[i];
                if (extent.Offset > position || (extent.Flags & NbdMetaContexts.StateZero) == 0)
                {
                    return false;
                }

                position = Math.Max(position, extent.End);
            }

            return position >= end;
        }
    }
}
