namespace ImageioProxy.Bench;

/// <summary>Source images, made from a seeded generator so every run uploads the same bytes.</summary>
internal static class Images
{
    private const int Block = 4 << 20;

    public static async Task WriteRandomAsync(string path, long size, int seed, CancellationToken cancellationToken)
    {
        var random = new Random(seed);
        var buffer = new byte[Block];
        await using var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1, FileOptions.Asynchronous);
        for (long done = 0; done < size; done += Block)
        {
            var length = (int)Math.Min(Block, size - done);
            random.NextBytes(buffer.AsSpan(0, length));
            await file.WriteAsync(buffer.AsMemory(0, length), cancellationToken);
        }
    }

    /// <summary>A sparse image whose first MiB of every 10 MiB is random data and the rest a hole:
    /// 10 % data, 90 % zeros, as a freshly installed guest disk looks to virt-v2v.</summary>
    public static async Task WriteTenPercentDataAsync(string path, long size, int seed, CancellationToken cancellationToken)
    {
        const int Data = 1 << 20;
        const long Stride = 10L << 20;
        var random = new Random(seed);
        var buffer = new byte[Data];
        await using var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1, FileOptions.Asynchronous);
        file.SetLength(size);
        for (long offset = 0; offset < size; offset += Stride)
        {
            var length = (int)Math.Min(Data, size - offset);
            random.NextBytes(buffer.AsSpan(0, length));
            await RandomAccess.WriteAsync(file.SafeFileHandle, buffer.AsMemory(0, length), offset, cancellationToken);
        }
    }

    /// <summary>Cuts <paramref name="source"/> into <paramref name="count"/> equal files, for clients that
    /// upload ranges (curl uploads whole files).</summary>
    public static async Task<List<string>> SplitAsync(string source, int count, CancellationToken cancellationToken)
    {
        var size = new FileInfo(source).Length;
        if (size % count != 0)
        {
            throw new ArgumentException($"{size} bytes do not split into {count} equal parts");
        }
        var partSize = size / count;
        var parts = new List<string>();
        var buffer = new byte[Block];
        await using var input = new FileStream(source, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.Asynchronous);
        for (var i = 0; i < count; i++)
        {
            var part = $"{source}.part{i}";
            parts.Add(part);
            await using var output = new FileStream(part, FileMode.Create, FileAccess.Write, FileShare.None, 1, FileOptions.Asynchronous);
            for (long done = 0; done < partSize;)
            {
                var n = await input.ReadAsync(buffer.AsMemory(0, (int)Math.Min(Block, partSize - done)), cancellationToken);
                await output.WriteAsync(buffer.AsMemory(0, n), cancellationToken);
                done += n;
            }
        }
        return parts;
    }
}
