using System.Text;
using static ImageioProxy.Bench.ComparisonResult;

namespace ImageioProxy.Bench;

/// <summary>Writes the suite's section of docs/benchmarks.md, between two markers, leaving the rest of
/// the file (hand-written analysis, other benchmarks) alone.</summary>
internal static class Report
{
    public const string Begin = "<!-- BEGIN scripts/bench.sh output -->";
    public const string End = "<!-- END scripts/bench.sh output -->";

    public static async Task WriteAsync(BenchSettings settings, IReadOnlyList<ComparisonResult> results, IReadOnlyList<string> notes,
        string uptimeBefore, string uptimeAfter, TimeSpan elapsed, CancellationToken cancellationToken)
    {
        var text = new StringBuilder();
        text.AppendLine(Begin);
        text.AppendLine();
        text.AppendLine($"Run of {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, {elapsed.TotalMinutes:0.0} minutes. Command:");
        text.AppendLine();
        text.AppendLine("```");
        text.AppendLine($"bash scripts/bench.sh {settings.Command.Replace($"--proxy {settings.ProxyPath}", "", StringComparison.Ordinal).Replace("--markdown " + settings.Markdown, "", StringComparison.Ordinal).Trim()}".TrimEnd());
        text.AppendLine("```");
        text.AppendLine();
        text.AppendLine($"Machine: {await MachineAsync(cancellationToken)}");
        text.AppendLine($"Load: before `{uptimeBefore}`; after `{uptimeAfter}`.");
        text.AppendLine($"qemu-nbd (scenarios and baselines): `GLIBC_TUNABLES={settings.QemuTunables} qemu-nbd {string.Join(' ', QemuNbd.Arguments("IMAGE", "SOCKET", readOnly: false))}`.");
        if (settings.ProxyArgs.Count > 0 || settings.ProxyEnvironment.Count > 0)
        {
            text.AppendLine($"Proxy settings: {string.Join(' ', settings.ProxyArgs)} {string.Join(' ', settings.ProxyEnvironment.Select(e => $"{e.Key}={e.Value}"))}");
        }
        text.AppendLine();
        text.AppendLine("| scenario | what | GiB/s or req/s (median) | proxy CPU-s/GiB | peak RSS MiB | baseline | baseline (median) | ratio, median of rounds | per-round ratios | target | met |");
        text.AppendLine("|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (var result in results)
        {
            for (var baseline = 1; baseline < result.Variants.Count; baseline++)
            {
                var first = baseline == 1;
                var rate = result.Rounds[0][0].RequestsPerSecond is null
                    ? $"{F(result.MedianRate(0))} GiB/s ({F(result.MedianSeconds(0), "0.00")} s)"
                    : $"{F(result.MedianRate(0), "0")} req/s, p99 {F(MedianOf(result.Rounds.Select(r => r[0].P99Milliseconds ?? double.NaN)), "0.00")} ms";
                var baselineRate = result.Rounds[0][baseline].RequestsPerSecond is null
                    ? $"{F(result.MedianRate(baseline))} GiB/s ({F(result.MedianSeconds(baseline), "0.00")} s)"
                    : $"{F(result.MedianRate(baseline), "0")} req/s, p99 {F(MedianOf(result.Rounds.Select(r => r[baseline].P99Milliseconds ?? double.NaN)), "0.00")} ms";
                var cpu = result.Rounds[0][0].RequestsPerSecond is null
                    ? result.MedianCpuPerGiB(0) is double c ? F(c) : "–"
                    : $"{F(MedianOf(result.Rounds.Select(r => (r[0].ServerCpuSeconds ?? 0) / (r[0].RequestsPerSecond!.Value * r[0].Seconds) * 1e6)), "0")} µs/request";
                var rss = result.MaxPeakRss(0) is long r ? $"{r >> 20}" : "–";
                var met = first && result.Met is bool m ? (m ? "yes" : "**no**") : "";
                text.AppendLine($"| {(first ? result.Id : "")} | {(first ? result.Title : "")} | {(first ? rate : "")} | {(first ? cpu : "")} | {(first ? rss : "")} | {result.Variants[baseline].Name} | {baselineRate} | **{F(result.MedianRatio(baseline))}** | {string.Join(" ", result.Ratios(baseline).Select(x => F(x, "0.00")))} | {(first ? result.Target : "")} | {met} |");
            }
        }
        text.AppendLine();
        foreach (var note in notes)
        {
            text.AppendLine($"- {note}");
        }
        foreach (var (id, limit) in new[] { ("S1", 0.2), ("E1", 0.2), ("S3", 0.6) })
        {
            if (results.FirstOrDefault(r => r.Id == id) is { } r && r.MedianCpuPerGiB(0) is double cpu)
            {
                text.AppendLine($"- Efficiency {id}: {F(cpu)} proxy CPU-s/GiB against a target of ≤ {F(limit, "0.0")}: {(cpu <= limit ? "met" : "**not met**")}.");
            }
        }
        var sinkCpu = results.SelectMany(r => r.Variants.Select((v, i) => (r, v, i)))
            .Where(x => x.v.Name.StartsWith("sink, curl", StringComparison.Ordinal) && x.r.MedianCpuPerGiB(x.i) is not null)
            .Select(x => $"{x.v.Name}: {F(x.r.MedianCpuPerGiB(x.i)!.Value)} CPU-s/GiB, peak RSS {x.r.MaxPeakRss(x.i) >> 20} MiB");
        foreach (var line in sinkCpu)
        {
            text.AppendLine($"- {line}");
        }
        text.AppendLine();
        text.AppendLine(End);

        var path = settings.Markdown!;
        var existing = File.Exists(path) ? await File.ReadAllTextAsync(path, cancellationToken) : "# Benchmarks\n\n";
        var begin = existing.IndexOf(Begin, StringComparison.Ordinal);
        var end = existing.IndexOf(End, StringComparison.Ordinal);
        var updated = begin >= 0 && end > begin
            ? existing[..begin] + text.ToString().TrimEnd() + existing[(end + End.Length)..]
            : existing.TrimEnd() + "\n\n## Proxy scenario suite (issue #6)\n\n" + text;
        await File.WriteAllTextAsync(path, updated, cancellationToken);
        Console.WriteLine($"wrote {path}");
    }

    private static readonly string[] SocketBufferSettings = ["wmem_default", "wmem_max", "rmem_max"];

    private static async Task<string> MachineAsync(CancellationToken cancellationToken)
    {
        var cpu = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "?";
        var memory = File.ReadLines("/proc/meminfo").First().Split(' ', StringSplitOptions.RemoveEmptyEntries)[1];
        var qemu = (await Tool.RunAsync("qemu-nbd", ["--version"], cancellationToken)).Split('\n')[0].Trim();
        var nbdcopy = (await Tool.RunAsync("nbdcopy", ["--version"], cancellationToken)).Split('\n')[0].Trim();
        var curl = (await Tool.RunAsync("curl", ["--version"], cancellationToken)).Split(' ')[1];
        var kernel = (await Tool.RunAsync("uname", ["-r"], cancellationToken)).Trim();
        // Socket buffer limits move S4 (curl's unix socket gets wmem_default) and the NBD buffers (capped at wmem_max).
        var buffers = string.Join(", ", SocketBufferSettings.Select(name => $"net.core.{name} {File.ReadAllText($"/proc/sys/net/core/{name}").Trim()}"));
        return $"{Environment.ProcessorCount} vCPU ({cpu}), {long.Parse(memory, System.Globalization.CultureInfo.InvariantCulture) >> 20} GiB RAM, "
            + $"Linux {kernel}, .NET {Environment.Version}, {qemu}, {nbdcopy}, curl {curl}, {buffers}, tmpfs source and target (S8: target on ext4/virtio).";
    }
}
