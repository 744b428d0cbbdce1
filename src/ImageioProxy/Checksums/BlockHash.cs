// PLACEHOLDER until branch "pieces" lands; deleted at merge.
namespace ImageioProxy.Checksums;

public interface IChecksumSource
{
    ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct);
    ValueTask<IReadOnlyList<NbdClient.NbdExtent>> GetExtentsAsync(long offset, long length, CancellationToken ct);
}

public static class BlockHash
{
    public static IReadOnlyList<string> Algorithms { get; } = ["blake2b", "sha1", "sha256"];

    public static bool IsSupported(string algorithm) => Algorithms.Contains(algorithm);

    public static Task<string> ComputeAsync(IChecksumSource source, long size, string algorithm, int blockSize, CancellationToken ct)
        => throw new NotImplementedException();
}
