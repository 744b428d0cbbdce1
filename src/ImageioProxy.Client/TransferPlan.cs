namespace ImageioProxy.Client;

/// <summary>What one request of a transfer does.</summary>
public enum TransferOperationKind
{
    /// <summary>Copy these bytes (read, then PUT or write).</summary>
    Data,

    /// <summary>The range reads as zeroes: zero it on the target, or skip it.</summary>
    Zero,
}

/// <summary>One request of a transfer.</summary>
public readonly record struct TransferOperation(TransferOperationKind Kind, long Offset, long Length)
{
    public long End => Offset + Length;
}

/// <summary>Turns an image's extents into requests: data in chunks of at most the chunk size, zeroes in
/// steps of at most <see cref="MaxZeroStep"/> (imageio's server zeroes in 128 MiB steps; smaller requests
/// also keep the progress moving).</summary>
public static class TransferPlanner
{
    public const long MaxZeroStep = 128L * 1024 * 1024;

    /// <summary>Zero runs shorter than this between data are sent as data: one bigger PUT costs less than a
    /// PUT, a PATCH and another PUT. Filesystems report zeroes at 4 KiB granularity, which would otherwise
    /// split a mostly-data region into many tiny requests.</summary>
    public const long SmallZeroRun = 64 * 1024;

    public static IReadOnlyList<TransferOperation> Plan(IEnumerable<ImageExtent> extents, int chunkSize)
    {
        ArgumentNullException.ThrowIfNull(extents);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(chunkSize);

        // 1. Runs of one kind, contiguous (a gap in the extents is copied as data: always correct).
        var runs = new List<TransferOperation>();
        long position = -1;
        foreach (var extent in extents)
        {
            if (extent.Length <= 0)
            {
                continue;
            }
            if (position >= 0 && extent.Start > position)
            {
                Append(runs, new TransferOperation(TransferOperationKind.Data, position, extent.Start - position));
            }
            if (position >= 0 && extent.Start < position)
            {
                throw new ArgumentException($"extents overlap or are out of order at {extent.Start}", nameof(extents));
            }
            Append(runs, new TransferOperation(extent.Zero ? TransferOperationKind.Zero : TransferOperationKind.Data, extent.Start, extent.Length));
            position = extent.End;
        }

        // 2. Short zero runs inside data become data.
        var merged = new List<TransferOperation>(runs.Count);
        for (var i = 0; i < runs.Count; i++)
        {
            var run = runs[i];
            var between = i > 0 && i < runs.Count - 1;
            if (run.Kind == TransferOperationKind.Zero && between && run.Length < SmallZeroRun)
            {
                run = run with { Kind = TransferOperationKind.Data };
            }
            Append(merged, run);
        }

        // 3. Split into requests.
        var operations = new List<TransferOperation>();
        foreach (var run in merged)
        {
            var step = run.Kind == TransferOperationKind.Data ? chunkSize : MaxZeroStep;
            for (var offset = run.Offset; offset < run.End; offset += step)
            {
                operations.Add(run with { Offset = offset, Length = Math.Min(step, run.End - offset) });
            }
        }
        return operations;
    }

    private static void Append(List<TransferOperation> runs, TransferOperation run)
    {
        if (runs.Count > 0 && runs[^1].Kind == run.Kind && runs[^1].End == run.Offset)
        {
            runs[^1] = runs[^1] with { Length = runs[^1].Length + run.Length };
        }
        else
        {
            runs.Add(run);
        }
    }
}
