using System.Collections.Concurrent;
using System.Security.Cryptography;
using Sodium = NSec.Cryptography;

namespace ImageioProxy.Checksums;

/// <summary>One hash algorithm as imageio's blkhash uses it: a one-shot digest for blocks and an incremental
/// digest for the outer hash, both with the same parameters.</summary>
internal abstract class BlockHashAlgorithm
{
    // Zeroes fed repeatedly to compute the digest of a zero block without allocating a block of zeroes.
    private static readonly byte[] ZeroChunk = new byte[256 * 1024];

    // Digests of zero blocks by length. Bounded because the block size comes from the query string; in
    // practice there are one or two entries per algorithm (the block size and the image's last block).
    private readonly ConcurrentDictionary<int, byte[]> _zeroDigests = new();
    private const int MaxCachedZeroDigests = 64;

    protected BlockHashAlgorithm(string name, int digestSize)
    {
        Name = name;
        DigestSize = digestSize;
    }

    /// <summary>The hashlib name, as clients send it in <c>?algorithm=</c>.</summary>
    public string Name { get; }

    public int DigestSize { get; }

    public abstract void HashData(ReadOnlySpan<byte> data, Span<byte> digest);

    public abstract IOuterHash CreateOuterHash();

    /// <summary>The digest of <paramref name="length"/> zero bytes (blkhash's <c>Hash.zero(count)</c>).</summary>
    public byte[] ZeroDigest(int length)
    {
        if (_zeroDigests.TryGetValue(length, out var cached))
        {
            return cached;
        }

        // Incremental hashing of the same bytes gives the same digest as hashing them in one go.
        using var hash = CreateOuterHash();
        for (var remaining = length; remaining > 0; remaining -= ZeroChunk.Length)
        {
            hash.Append(ZeroChunk.AsSpan(0, Math.Min(remaining, ZeroChunk.Length)));
        }

        var digest = new byte[DigestSize];
        hash.Finish(digest);
        if (_zeroDigests.Count < MaxCachedZeroDigests)
        {
            _zeroDigests.TryAdd(length, digest);
        }

        return digest;
    }
}

/// <summary>An incremental hash.</summary>
internal interface IOuterHash : IDisposable
{
    void Append(ReadOnlySpan<byte> data);

    void Finish(Span<byte> digest);
}

/// <summary>MD5, SHA-1, SHA-2 and SHA-3 from the BCL (OpenSSL on Linux).</summary>
internal sealed class BclBlockHashAlgorithm(string name, HashAlgorithmName algorithm, int digestSize)
    : BlockHashAlgorithm(name, digestSize)
{
    public override void HashData(ReadOnlySpan<byte> data, Span<byte> digest) =>
        CryptographicOperations.HashData(algorithm, data, digest);

    public override IOuterHash CreateOuterHash() => new Outer(IncrementalHash.CreateHash(algorithm));

    private sealed class Outer(IncrementalHash hash) : IOuterHash
    {
        public void Append(ReadOnlySpan<byte> data) => hash.AppendData(data);

        public void Finish(Span<byte> digest) => hash.GetHashAndReset(digest);

        public void Dispose() => hash.Dispose();
    }
}

/// <summary>BLAKE2b with a 32-byte digest (hashlib's <c>blake2b(digest_size=32)</c>), through NSec/libsodium.
/// The BCL has no BLAKE2. NSec's unkeyed BLAKE2b-256 is libsodium's crypto_generichash with outlen 32, which
/// sets digest_length=32 in the BLAKE2 parameter block exactly like hashlib does; it is not a truncated
/// BLAKE2b-512.</summary>
internal sealed class Blake2bBlockHashAlgorithm() : BlockHashAlgorithm("blake2b", 32)
{
    private static readonly Sodium.HashAlgorithm Algorithm = Sodium.HashAlgorithm.Blake2b_256;

    public override void HashData(ReadOnlySpan<byte> data, Span<byte> digest) => Algorithm.Hash(data, digest);

    public override IOuterHash CreateOuterHash() => new Outer();

    private sealed class Outer : IOuterHash
    {
        private Sodium.IncrementalHash _state;

        public Outer() => Sodium.IncrementalHash.Initialize(Algorithm, out _state);

        public void Append(ReadOnlySpan<byte> data) => Sodium.IncrementalHash.Update(ref _state, data);

        public void Finish(Span<byte> digest) => Sodium.IncrementalHash.Finalize(ref _state, digest);

        public void Dispose()
        {
        }
    }
}
