using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace TestSupport;

/// <summary>Result of <c>qemu-img compare</c>: identical or not, and what qemu-img said (first difference).</summary>
public sealed record QemuImgCompareResult(bool Identical, string Output);

/// <summary>One extent of <c>qemu-img map --output=json</c>.</summary>
public sealed record QemuImgMapEntry(
    [property: JsonPropertyName("start")] long Start,
    [property: JsonPropertyName("length")] long Length,
    [property: JsonPropertyName("depth")] int Depth,
    [property: JsonPropertyName("zero")] bool Zero,
    [property: JsonPropertyName("data")] bool Data,
    [property: JsonPropertyName("offset")] long? Offset);

/// <summary>The interesting part of <c>qemu-img info --output=json</c>.</summary>
public sealed record QemuImgInfo(
    [property: JsonPropertyName("format")] string Format,
    [property: JsonPropertyName("virtual-size")] long VirtualSize,
    [property: JsonPropertyName("actual-size")] long ActualSize);

/// <summary>What a region of a generated test image holds.</summary>
public enum ImageRegionKind
{
    /// <summary>Pseudo-random bytes.</summary>
    Data,
    /// <summary>Zero bytes that were written (allocated on disk).</summary>
    Zero,
    /// <summary>Never written: a hole in the sparse file (reads as zeros).</summary>
    Hole,
}

/// <summary>One region of a generated test image.</summary>
public sealed record ImageRegion(long Offset, long Length, ImageRegionKind Kind);

/// <summary>A generated raw test image and its layout.</summary>
public sealed record TestImage(string Path, long Size, IReadOnlyList<ImageRegion> Regions)
{
    /// <summary>Bytes of pseudo-random data (not zero, not hole).</summary>
    public long DataBytes => Regions.Where(r => r.Kind == ImageRegionKind.Data).Sum(r => r.Length);
}

/// <summary>Runs qemu-img.</summary>
public static class QemuImg
{
    /// <summary>Granularity of generated regions: a multiple of every block and cluster size in play.</summary>
    public const int RegionAlignment = 64 * 1024;

    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(5);

    /// <summary><c>qemu-img create -f FORMAT PATH SIZE</c> (an empty, sparse image).</summary>
    public static async Task CreateAsync(string path, string format, long size, CancellationToken cancellationToken = default)
        => (await RunAsync(["create", "-q", "-f", format, path, size.ToString(CultureInfo.InvariantCulture)], cancellationToken).ConfigureAwait(false)).EnsureSuccess();

    /// <summary><c>qemu-img convert</c> between formats (sparse output).</summary>
    public static async Task ConvertAsync(string source, string sourceFormat, string target, string targetFormat, CancellationToken cancellationToken = default)
        => (await RunAsync(["convert", "-q", "-f", sourceFormat, "-O", targetFormat, source, target], cancellationToken).ConfigureAwait(false)).EnsureSuccess();

    /// <summary><c>qemu-img compare</c>: compares guest-visible content (a hole equals zeros). With
    /// <paramref name="strict"/>, different sizes or allocation also count as different. <paramref name="forceShare"/>
    /// (-U) reads images that a running qemu-nbd has locked. Throws if qemu-img fails to compare.</summary>
    public static async Task<QemuImgCompareResult> CompareAsync(
        string first,
        string second,
        string firstFormat = "raw",
        string secondFormat = "raw",
        bool strict = false,
        bool forceShare = false,
        CancellationToken cancellationToken = default)
    {
        List<string> args = ["compare", "-f", firstFormat, "-F", secondFormat];
        if (strict)
        {
            args.Add("-s");
        }

        if (forceShare)
        {
            args.Add("-U");
        }

        args.AddRange([first, second]);
        var result = await RunAsync(args, cancellationToken).ConfigureAwait(false);
        var output = (result.StandardOutput + result.StandardError).Trim();
        // Exit codes (qemu-img(1)): 0 identical, 1 different, 2 open error, 3 error while comparing.
        return result.ExitCode switch
        {
            0 => new QemuImgCompareResult(true, output),
            1 => new QemuImgCompareResult(false, output),
            _ => throw new ExternalProcessException($"qemu-img compare could not compare: {result}", result),
        };
    }

    /// <summary><c>qemu-img map --output=json</c>.</summary>
    public static async Task<IReadOnlyList<QemuImgMapEntry>> MapAsync(string path, string format = "raw", bool forceShare = false, CancellationToken cancellationToken = default)
    {
        List<string> args = ["map", "--output=json", "-f", format];
        if (forceShare)
        {
            args.Add("-U");
        }

        args.Add(path);
        var result = (await RunAsync(args, cancellationToken).ConfigureAwait(false)).EnsureSuccess();
        return JsonSerializer.Deserialize<List<QemuImgMapEntry>>(result.StandardOutput)
            ?? throw new FormatException($"qemu-img map printed no JSON: {result}");
    }

    /// <summary><c>qemu-img info --output=json</c>.</summary>
    public static async Task<QemuImgInfo> InfoAsync(string path, string? format = null, bool forceShare = false, CancellationToken cancellationToken = default)
    {
        List<string> args = ["info", "--output=json"];
        if (format is not null)
        {
            args.AddRange(["-f", format]);
        }

        if (forceShare)
        {
            args.Add("-U");
        }

        args.Add(path);
        var result = (await RunAsync(args, cancellationToken).ConfigureAwait(false)).EnsureSuccess();
        return JsonSerializer.Deserialize<QemuImgInfo>(result.StandardOutput)
            ?? throw new FormatException($"qemu-img info printed no JSON: {result}");
    }

    /// <summary>
    /// Writes a sparse raw image of <paramref name="size"/> bytes whose content depends only on
    /// <paramref name="seed"/>: regions of 64 KiB to 2 MiB (multiples of <see cref="RegionAlignment"/>) of
    /// pseudo-random data, written zeros and holes. About <paramref name="zeroFraction"/> of the regions read
    /// as zeros, split evenly between written zeros and holes. Overwrites an existing file.
    /// </summary>
    public static async Task<TestImage> WriteRandomImageAsync(string path, long size, int seed, double zeroFraction = 0.5, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        ArgumentOutOfRangeException.ThrowIfLessThan(zeroFraction, 0.0);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(zeroFraction, 1.0);

        // new Random(seed) uses the legacy algorithm, which is stable across .NET versions.
        var random = new Random(seed);
        var regions = new List<ImageRegion>();
        var buffer = new byte[2 * 1024 * 1024];
        var zeros = new byte[buffer.Length];
        await using var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.Read, 1, FileOptions.Asynchronous);
        for (long offset = 0; offset < size;)
        {
            var length = Math.Min(size - offset, (long)random.Next(1, 33) * RegionAlignment);
            var kind = random.NextDouble() < zeroFraction
                ? (random.Next(2) == 0 ? ImageRegionKind.Zero : ImageRegionKind.Hole)
                : ImageRegionKind.Data;
            var chunk = buffer.AsMemory(0, (int)length);
            if (kind == ImageRegionKind.Data)
            {
                random.NextBytes(chunk.Span);
            }

            if (kind != ImageRegionKind.Hole)
            {
                file.Position = offset;
                await file.WriteAsync(kind == ImageRegionKind.Data ? chunk : zeros.AsMemory(0, (int)length), cancellationToken).ConfigureAwait(false);
            }

            if (regions.Count > 0 && regions[^1].Kind == kind)
            {
                regions[^1] = regions[^1] with { Length = regions[^1].Length + length };
            }
            else
            {
                regions.Add(new ImageRegion(offset, length, kind));
            }

            offset += length;
        }

        file.SetLength(size);
        return new TestImage(Path.GetFullPath(path), size, regions);
    }

    private static Task<ProcessResult> RunAsync(IEnumerable<string> args, CancellationToken cancellationToken)
        => ExternalProcess.RunAsync(Tool.Require("qemu-img"), args, Timeout, cancellationToken: cancellationToken);
}
