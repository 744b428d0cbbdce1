using System.Globalization;

namespace ImageioProxy.Bench;

/// <summary>One timed run. CPU and RSS are the measured server's (proxy or sink), null for nbdcopy.</summary>
internal sealed record Measurement(double Seconds, long Bytes, double? ServerCpuSeconds = null, long? PeakRssBytes = null,
    double? RequestsPerSecond = null, double? P99Milliseconds = null)
{
    public const double GiB = 1L << 30;

    public double GiBPerSecond => Bytes / Seconds / GiB;

    /// <summary>The figure ratios compare: throughput, or requests per second for S7.</summary>
    public double Rate => RequestsPerSecond ?? GiBPerSecond;

    public double? CpuSecondsPerGiB => ServerCpuSeconds is double cpu && Bytes > 0 ? cpu / (Bytes / GiB) : null;
}

/// <summary>One way of doing the scenario's job: the scenario itself or one of its baselines.</summary>
internal sealed record Variant(string Name, Func<int, CancellationToken, Task<Measurement>> RunAsync);

/// <summary>The runs of one scenario and its baselines, round by round.</summary>
internal sealed class ComparisonResult(string id, string title, string target, IReadOnlyList<Variant> variants)
{
    public string Id { get; } = id;

    public string Title { get; } = title;

    /// <summary>What the issue asks, e.g. "≥ 0.90 × nbdcopy"; the first baseline is the one it names.</summary>
    public string Target { get; } = target;

    public IReadOnlyList<Variant> Variants { get; } = variants;

    public List<Measurement[]> Rounds { get; } = [];

    public double? TargetRatio { get; init; }

    /// <summary>M8's target: the proxy's peak RSS at most this many bytes.</summary>
    public long? PeakRssLimit { get; init; }

    public Measurement Median(int variant) => MedianBy(variant, m => m.Rate);

    public double MedianRate(int variant) => MedianOf(Rounds.Select(r => r[variant].Rate));

    public double MedianSeconds(int variant) => MedianOf(Rounds.Select(r => r[variant].Seconds));

    public double? MedianCpuPerGiB(int variant)
    {
        var values = Rounds.Select(r => r[variant].CpuSecondsPerGiB).OfType<double>().ToList();
        return values.Count == 0 ? null : MedianOf(values);
    }

    public long? MaxPeakRss(int variant)
    {
        var values = Rounds.Select(r => r[variant].PeakRssBytes).OfType<long>().ToList();
        return values.Count == 0 ? null : values.Max();
    }

    /// <summary>Per round: the scenario's rate over baseline <paramref name="baseline"/>'s.</summary>
    public IReadOnlyList<double> Ratios(int baseline) => [.. Rounds.Select(r => r[0].Rate / r[baseline].Rate)];

    public double MedianRatio(int baseline) => MedianOf(Ratios(baseline));

    public bool? Met => TargetRatio is double t ? MedianRatio(1) >= t
        : PeakRssLimit is long limit && MaxPeakRss(0) is long rss ? rss <= limit : null;

    public static double MedianOf(IEnumerable<double> values)
    {
        var sorted = values.Order().ToList();
        if (sorted.Count == 0)
        {
            return double.NaN;
        }
        return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[(sorted.Count / 2) - 1] + sorted[sorted.Count / 2]) / 2;
    }

    private Measurement MedianBy(int variant, Func<Measurement, double> key)
    {
        var sorted = Rounds.Select(r => r[variant]).OrderBy(key).ToList();
        return sorted[sorted.Count / 2];
    }

    public static string F(double value, string format = "0.000") => value.ToString(format, CultureInfo.InvariantCulture);
}
