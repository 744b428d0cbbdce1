using System.Security.Cryptography;
using System.Text;
using NbdClient;

namespace ImageioProxy.Tests.Checksums;

/// <summary>One piece of a generated test image. Generated exactly like make_blkhash_vectors.py does.</summary>
internal abstract record Segment(long Length)
{
    /// <summary>Pseudo-random bytes: SHA-256("{seed}:{j}") for j = 0, 1, ... concatenated.</summary>
    public sealed record Data(string Seed, long Length) : Segment(Length);

    /// <summary>Zeroes that block status reports as zero.</summary>
    public sealed record Zero(long Length) : Segment(Length);

    /// <summary>Zeroes that block status reports as data (written zeroes, preallocated space).</summary>
    public sealed record WrittenZero(long Length) : Segment(Length);
}

/// <summary>An in-memory image and its base:allocation extents.</summary>
internal sealed class TestImage
{
    private TestImage(byte[] bytes, IReadOnlyList<NbdExtent> extents)
    {
        Bytes = bytes;
        Extents = extents;
    }

    public byte[] Bytes { get; }

    public IReadOnlyList<NbdExtent> Extents { get; }

    public static TestImage Build(params Segment[] segments)
    {
        using var image = new MemoryStream();
        var extents = new List<NbdExtent>();
        foreach (var segment in segments)
        {
            if (segment.Length == 0)
            {
                continue;
            }

            var flags = segment is Segment.Zero ? NbdMetaContexts.StateHole | NbdMetaContexts.StateZero : 0u;
            extents.Add(new NbdExtent(image.Position, segment.Length, flags));
            if (segment is Segment.Data data)
            {
                image.Write(DataStream(data.Seed, data.Length));
            }
            else
            {
                image.Write(new byte[segment.Length]);
            }
        }

        return new TestImage(image.ToArray(), extents);
    }

    public static byte[] DataStream(string seed, long length)
    {
        var bytes = new byte[length];
        for (var j = 0; j * 32L < length; j++)
        {
            var digest = SHA256.HashData(Encoding.ASCII.GetBytes($"{seed}:{j}"));
            digest.AsSpan(0, (int)Math.Min(32, length - j * 32L)).CopyTo(bytes.AsSpan(j * 32));
        }

        return bytes;
    }
}
