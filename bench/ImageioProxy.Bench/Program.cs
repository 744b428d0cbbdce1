using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using ImageioProxy.Tests.Support;

namespace ImageioProxy.Bench;

// The scenario suite of issue #6 (docs/benchmarks.md): scripts/bench.sh builds and runs it.
//   ImageioProxy.Bench --proxy PATH [--pairs 3] [--size-gib 2] [--only S1,S3] [--markdown docs/benchmarks.md]
//                      [--proxy-arg --Section:Key=value]... [--proxy-env NAME=VALUE]... [--with-16g]
//                      [--client-wmem BYTES]   (net.core.wmem_default during the run, restored after; root)
//   ImageioProxy.Bench sink --port N [--cert PEM --key PEM] [--unix PATH] [--kestrel-defaults]   (the HTTP ceiling:
//                      PUT bodies are read and dropped, GET ?size=N answers N bytes)
internal static class BenchMain
{
    public static async Task<int> Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "sink")
        {
            return await SinkServer.RunAsync(args[1..]);
        }
        BenchSettings settings;
        try
        {
            settings = BenchSettings.Parse(args);
        }
        catch (ArgumentException e)
        {
            await Console.Error.WriteLineAsync(e.Message);
            return 2;
        }
        using var stop = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.Cancel(); };
        QemuNbd.Tunables = settings.QemuTunables;
        var suite = new Suite(settings);
        await suite.RunAsync(stop.Token);
        return 0;
    }
}

internal sealed partial class Suite(BenchSettings settings)
{
    private const long MiB = 1 << 20;
    private readonly List<ComparisonResult> _results = [];
    private readonly List<string> _notes = [];
    private string _source = "";
    private string _uptimeBefore = "";

    private string Dir => settings.WorkDirectory;

    private string NbdSocket => Path.Combine(Dir, "nbd.sock");

    public async Task RunAsync(CancellationToken cancellationToken)
    {
        var wall = Stopwatch.StartNew();
        _uptimeBefore = (await Tool.RunAsync("uptime", [], cancellationToken)).Trim();
        Directory.CreateDirectory(Dir);
        _source = Path.Combine(Dir, "source.raw");
        await Images.WriteRandomAsync(_source, settings.Size, seed: 1, cancellationToken);
        await Images.WriteRandomAsync(Path.Combine(Dir, "warm.raw"), MiB, seed: 2, cancellationToken);
        await Tool.RunAsync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", settings.KeyFile,
            "-out", settings.CertFile, "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"], cancellationToken);
        Log($"source {_source}: {settings.Size / MiB} MiB of random data; {settings.Pairs} rounds per scenario");

        const string WmemDefault = "/proc/sys/net/core/wmem_default";
        var wmemBefore = File.ReadAllText(WmemDefault).Trim();
        if (settings.ClientSendBuffer is int wmem)
        {
            // Only clients that never set SO_SNDBUF notice (curl in S4); restored in the finally below.
            File.WriteAllText(WmemDefault, wmem.ToString(CultureInfo.InvariantCulture));
            _notes.Add($"net.core.wmem_default was {wmem} for this run (`--client-wmem`; {wmemBefore} before and after).");
        }
        try
        {
            await RunScenariosAsync(wall, cancellationToken);
        }
        finally
        {
            if (settings.ClientSendBuffer is not null)
            {
                File.WriteAllText(WmemDefault, wmemBefore);
            }
        }
    }

    private async Task RunScenariosAsync(Stopwatch wall, CancellationToken cancellationToken)
    {
        if (settings.Only.Contains("AB")) await AbAsync(cancellationToken);
        if (settings.Runs("S1")) await S1Async(cancellationToken);
        if (settings.Runs("E1")) await E1Async(cancellationToken);
        if (settings.Runs("S2")) await S2Async(cancellationToken);
        if (settings.Runs("S3")) await S3Async(cancellationToken);
        if (settings.Runs("S4")) await S4Async(cancellationToken);
        if (settings.Runs("S5")) await S5Async(cancellationToken);
        if (settings.Runs("S6")) await S6Async(cancellationToken);
        if (settings.Runs("S7")) await S7Async(cancellationToken);
        if (settings.Runs("S8")) await S8Async(cancellationToken);
        if (settings.Runs("M8")) await EightUploadsAsync(cancellationToken);

        var uptimeAfter = (await Tool.RunAsync("uptime", [], cancellationToken)).Trim();
        Log($"done in {wall.Elapsed.TotalSeconds:0} s");
        if (settings.Markdown is not null)
        {
            await Report.WriteAsync(settings, _results, _notes, _uptimeBefore, uptimeAfter, wall.Elapsed, cancellationToken);
        }
        Directory.Delete(Dir, recursive: true);
    }

    // ---------------------------------------------------------------------------------------------
    // Scenarios

    private async Task S1Async(CancellationToken cancellationToken)
    {
        var result = new ComparisonResult("S1", $"one curl PUT of {Gib(settings.Size)} random data, plain HTTP", "≥ 0.90 × nbdcopy",
            [
                new("proxy, curl PUT (HTTP)", (round, ct) => ProxyCurlUploadAsync(round, tls: false, unix: false, ct)),
                new("nbdcopy → qemu-nbd (the limit)", (round, ct) => NbdcopyUploadAsync(_source, Dir, round, ct)),
                new("sink, curl PUT (HTTP ceiling)", (round, ct) => SinkCurlUploadAsync(tls: false, ct)),
            ]) { TargetRatio = 0.90 };
        await CompareAsync(result, cancellationToken);
    }

    /// <summary>S1's CPU per GiB in a warm process. A fresh proxy's first large upload also pays for
    /// compiling the paths that only back-pressure reaches (a budget wait, a full NBD socket): about 600
    /// methods, 30 % of its CPU in perf. A daemon pays that once; here one untimed upload of the same image
    /// pays it, the target's blocks are punched out again, and the second upload is timed. nbdcopy gets the
    /// same rehearsal, so qemu-nbd has seen the same traffic on both sides.</summary>
    private async Task E1Async(CancellationToken cancellationToken)
    {
        var result = new ComparisonResult("E1", $"S1 in a warm proxy: the second {Gib(settings.Size)} curl PUT, the first one's blocks punched out", "≤ 0.2 proxy CPU-s/GiB",
            [
                new("proxy, second curl PUT (HTTP)", (round, ct) => ProxyCurlUploadAsync(round, tls: false, unix: false, ct, rehearse: true)),
                new("nbdcopy → qemu-nbd, second copy", (round, ct) => NbdcopyUploadAsync(_source, Dir, round, ct, rehearse: true)),
            ]);
        await CompareAsync(result, cancellationToken);
    }

    /// <summary>Deallocates the target's blocks under a running qemu-nbd (opened with O_DIRECT, so it
    /// caches none of them), which leaves it as sparse as a fresh one.</summary>
    private static async Task PunchOutAsync(string target, long size, CancellationToken cancellationToken) =>
        await Tool.RunAsync("fallocate", ["--punch-hole", "--offset", "0", "--length", size.ToString(CultureInfo.InvariantCulture), target], cancellationToken);

    /// <summary>Not part of the default run: one tuning's gain, S1 with and without it, alternated.</summary>
    private async Task AbAsync(CancellationToken cancellationToken)
    {
        var b = new ProxyVariant(settings.BArgs, settings.BEnvironment, settings.BProxyPath);
        var description = string.Join(' ', settings.BArgs.Concat(settings.BEnvironment.Select(e => $"{e.Key}={e.Value}"))
            .Concat(settings.BProxyPath is null ? [] : [$"proxy {settings.BProxyPath}"]));
        var tls = settings.Only.Contains("AB-TLS");
        var unix = settings.Only.Contains("AB-UNIX");
        var rehearse = settings.Only.Contains("AB-E1");
        if (settings.Only.Contains("AB-GET"))
        {
            // S5's traffic: one curl GET of the whole image.
            await CompareAsync(new ComparisonResult("AB", $"S5{(rehearse ? " in a warm proxy" : "")} with `{description}` (B) vs without (A)", "B / A",
                [
                    new("B: with", (round, ct) => ProxyDownloadAsync(round, b, ct, rehearse)),
                    new("A: without", (round, ct) => ProxyDownloadAsync(round, null, ct, rehearse)),
                ]), cancellationToken);
            return;
        }
        if (settings.Only.Contains("AB-S2"))
        {
            // S2's traffic (4 parallel range PUTs + flush) instead of S1's.
            var parts = await Images.SplitAsync(_source, 4, cancellationToken);
            try
            {
                await CompareAsync(new ComparisonResult("AB", $"S2 with `{description}` (B) vs without (A)", "B / A",
                    [
                        new("B: with", (round, ct) => ProxyParallelUploadAsync(parts, round, ct, b)),
                        new("A: without", (round, ct) => ProxyParallelUploadAsync(parts, round, ct)),
                    ]), cancellationToken);
            }
            finally
            {
                parts.ForEach(File.Delete);
            }
            return;
        }
        var result = new ComparisonResult("AB", $"{(rehearse ? "E1" : "S1")}{(tls ? " over HTTPS" : unix ? " over the unix socket" : "")} with `{description}` (B) vs without (A)", "B / A",
            [
                new("B: with", (round, ct) => ProxyCurlUploadAsync(round, tls, unix, ct, variant: b, rehearse: rehearse)),
                new("A: without", (round, ct) => ProxyCurlUploadAsync(round, tls, unix, ct, rehearse: rehearse)),
            ]);
        await CompareAsync(result, cancellationToken);
    }

    private async Task S2Async(CancellationToken cancellationToken)
    {
        var parts = await Images.SplitAsync(_source, 4, cancellationToken);
        try
        {
            var result = new ComparisonResult("S2", "4 parallel curl range PUTs (flush=n) + PATCH flush", "≥ 1.0 × nbdcopy",
                [
                    new("proxy, 4 × curl PUT", (round, ct) => ProxyParallelUploadAsync(parts, round, ct)),
                    new("nbdcopy → qemu-nbd (the limit)", (round, ct) => NbdcopyUploadAsync(_source, Dir, round, ct)),
                ]) { TargetRatio = 1.0 };
            await CompareAsync(result, cancellationToken);
        }
        finally
        {
            parts.ForEach(File.Delete);
        }
    }

    private async Task S3Async(CancellationToken cancellationToken)
    {
        var result = new ComparisonResult("S3", "S1 over HTTPS (HTTP/1.1)", "≥ 0.85 × HTTPS sink",
            [
                new("proxy, curl PUT (HTTPS)", (round, ct) => ProxyCurlUploadAsync(round, tls: true, unix: false, ct)),
                new("sink, curl PUT (HTTPS ceiling)", (round, ct) => SinkCurlUploadAsync(tls: true, ct)),
                new("nbdcopy → qemu-nbd (the limit)", (round, ct) => NbdcopyUploadAsync(_source, Dir, round, ct)),
            ]) { TargetRatio = 0.85 };
        await CompareAsync(result, cancellationToken);
        await RecordNegotiatedProtocolAsync(cancellationToken);
    }

    private async Task S4Async(CancellationToken cancellationToken)
    {
        var result = new ComparisonResult("S4", "S1 over the local unix socket", "≥ 0.95 × nbdcopy",
            [
                new("proxy, curl --unix-socket PUT", (round, ct) => ProxyCurlUploadAsync(round, tls: false, unix: true, ct)),
                new("nbdcopy → qemu-nbd (the limit)", (round, ct) => NbdcopyUploadAsync(_source, Dir, round, ct)),
                new("sink, curl --unix-socket PUT (ceiling)", (round, ct) => SinkCurlUploadAsync(tls: false, ct, unix: true)),
            ]) { TargetRatio = 0.95 };
        await CompareAsync(result, cancellationToken);
    }

    private async Task S5Async(CancellationToken cancellationToken)
    {
        var result = new ComparisonResult("S5", $"GET of the whole {Gib(settings.Size)} image to /dev/null", "≥ 0.90 × nbdcopy",
            [
                new("proxy, curl GET (HTTP)", ProxyDownloadAsync),
                new("nbdcopy qemu-nbd → null:", NbdcopyDownloadAsync),
                new("sink, curl GET (HTTP ceiling)", (round, ct) => SinkCurlDownloadAsync(ct)),
            ]) { TargetRatio = 0.90 };
        await CompareAsync(result, cancellationToken);
    }

    private async Task S6Async(CancellationToken cancellationToken)
    {
        var sparse = Path.Combine(Dir, "sparse.raw");
        await Images.WriteTenPercentDataAsync(sparse, settings.Size, seed: 3, cancellationToken);
        try
        {
            var result = new ComparisonResult("S6", $"{Gib(settings.Size)} image, 90 % zeros, virt-v2v traffic (4 connections, 4 MiB PUT flush=n, PATCH zero, flush on each)",
                "report wall time next to S1",
                [
                    new("proxy, V2vLikeClient (HTTP)", (round, ct) => ProxyV2vUploadAsync(sparse, round, ct)),
                    new("nbdcopy → qemu-nbd (the limit)", (round, ct) => NbdcopyUploadAsync(sparse, Dir, round, ct)),
                ]);
            await CompareAsync(result, cancellationToken);
        }
        finally
        {
            File.Delete(sparse);
        }
    }

    private async Task S7Async(CancellationToken cancellationToken)
    {
        var script = Path.Combine(Dir, "put4k.lua");
        // One 4 KiB PUT at offset 0 per request, flush=n: the cost of a request, not of the disk.
        await File.WriteAllTextAsync(script, """
            wrk.method = "PUT"
            wrk.body = string.rep("x", 4096)
            wrk.headers["Content-Type"] = "application/octet-stream"
            """, cancellationToken);
        foreach (var connections in new[] { 1, 8 })
        {
            var result = new ComparisonResult($"S7/{connections}", $"4 KiB PUTs (flush=n) on {connections} keep-alive connection{(connections > 1 ? "s" : "")}, wrk",
                "report requests/s and p99",
                [
                    new("proxy", (round, ct) => ProxyWrkAsync(script, connections, ct)),
                    new("sink (HTTP ceiling)", (round, ct) => SinkWrkAsync(script, connections, ct)),
                ]);
            await CompareAsync(result, cancellationToken, rounds: Math.Min(settings.Pairs, 2));
        }
    }

    private async Task S8Async(CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(settings.DiskDirectory);
        var sizes = settings.With16GiB ? new[] { 1L, 4, 16 } : [1L, 4];
        foreach (var gib in sizes)
        {
            var size = gib << 30;
            // 16 GiB of source does not fit beside everything else in tmpfs: it stays on disk too.
            var sourceDir = gib > 4 ? settings.DiskDirectory : Dir;
            var source = Path.Combine(sourceDir, $"source-{gib}g.raw");
            await Images.WriteRandomAsync(source, size, seed: 4, cancellationToken);
            try
            {
                var result = new ComparisonResult($"S8/{gib}G", $"S1 at {gib} GiB, sparse target on disk", "throughput and RSS flat",
                    [
                        new("proxy, curl PUT (HTTP)", (round, ct) => ProxyCurlUploadAsync(round, tls: false, unix: false, ct, source, settings.DiskDirectory)),
                        new("nbdcopy → qemu-nbd (the limit)", (round, ct) => NbdcopyUploadAsync(source, settings.DiskDirectory, round, ct)),
                    ]);
                await CompareAsync(result, cancellationToken, rounds: 1);
            }
            finally
            {
                File.Delete(source);
            }
        }
    }

    private async Task EightUploadsAsync(CancellationToken cancellationToken)
    {
        var parts = await Images.SplitAsync(_source, 8, cancellationToken);
        try
        {
            var result = new ComparisonResult("M8", "8 concurrent range PUTs (flush=n) + PATCH flush: peak RSS", "peak RSS ≤ 150 MiB",
                [
                    new("proxy, 8 × curl PUT", (round, ct) => ProxyParallelUploadAsync(parts, round, ct)),
                    new("nbdcopy → qemu-nbd (the limit)", (round, ct) => NbdcopyUploadAsync(_source, Dir, round, ct)),
                ]) { PeakRssLimit = 150L << 20 };
            await CompareAsync(result, cancellationToken, rounds: 1);
        }
        finally
        {
            parts.ForEach(File.Delete);
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Runs

    private async Task<Measurement> ProxyCurlUploadAsync(int round, bool tls, bool unix, CancellationToken cancellationToken,
        string? source = null, string? targetDir = null, ProxyVariant? variant = null, bool rehearse = false)
    {
        source ??= _source;
        var size = new FileInfo(source).Length;
        var target = FreshTarget(targetDir ?? Dir, size);
        await using var qemu = await QemuNbd.StartAsync(target, NbdSocket, readOnly: false, cancellationToken);
        Measurement measurement;
        await using (var proxy = await ProxyProcess.StartAsync(settings, NbdSocket, size, tls, cancellationToken, variant))
        {
            var (url, curlArgs) = unix ? (proxy.LocalUrl, new[] { "--unix-socket", proxy.LocalSocket }) : (proxy.Url.ToString(), TlsArgs(tls));
            await WarmUpOverTcpAsync(proxy.Url, cancellationToken, splicedUploads: !tls);
            if (rehearse)
            {
                await Curl(cancellationToken, [.. curlArgs, "-X", "PUT", "--upload-file", source, url]);
                await PunchOutAsync(target, size, cancellationToken);
            }
            measurement = await MeasureAsync(proxy.Process, size, () => Curl(cancellationToken, [.. curlArgs, "-X", "PUT", "--upload-file", source, url]));
        }
        await qemu.DisposeAsync();
        await VerifyAsync(round, source, target, cancellationToken);
        File.Delete(target);
        return measurement;
    }

    private async Task<Measurement> ProxyParallelUploadAsync(List<string> parts, int round, CancellationToken cancellationToken, ProxyVariant? variant = null)
    {
        var size = settings.Size;
        var target = FreshTarget(Dir, size);
        await using var qemu = await QemuNbd.StartAsync(target, NbdSocket, readOnly: false, cancellationToken);
        Measurement measurement;
        await using (var proxy = await ProxyProcess.StartAsync(settings, NbdSocket, size, tls: false, cancellationToken, variant))
        {
            var url = proxy.Url.ToString();
            await WarmUpOverTcpAsync(new Uri(url), cancellationToken, splicedUploads: true);
            var partSize = new FileInfo(parts[0]).Length;
            measurement = await MeasureAsync(proxy.Process, size, async () =>
            {
                await Task.WhenAll(parts.Select((part, i) => Curl(cancellationToken, "-X", "PUT", "--upload-file", part,
                    "-H", $"Content-Range: bytes {i * partSize}-{((i + 1) * partSize) - 1}/*", url + "?flush=n")));
                await Curl(cancellationToken, "-X", "PATCH", "-H", "Content-Type: application/json", "--data", """{"op":"flush"}""", url);
            });
        }
        await qemu.DisposeAsync();
        await VerifyAsync(round, _source, target, cancellationToken);
        File.Delete(target);
        return measurement;
    }

    private async Task<Measurement> ProxyV2vUploadAsync(string source, int round, CancellationToken cancellationToken)
    {
        var size = new FileInfo(source).Length;
        var target = FreshTarget(Dir, size);
        await using var qemu = await QemuNbd.StartAsync(target, NbdSocket, readOnly: false, cancellationToken);
        Measurement measurement;
        await using (var proxy = await ProxyProcess.StartAsync(settings, NbdSocket, size, tls: false, cancellationToken))
        {
            await WarmUpOverTcpAsync(proxy.Url, cancellationToken, splicedUploads: true);
            measurement = await MeasureAsync(proxy.Process, size, async () =>
            {
                await using var client = await V2vLikeClient.OpenAsync(proxy.Url, new V2vLikeClientOptions(), cancellationToken);
                await client.UploadImageAsync(source, cancellationToken);
            });
        }
        await qemu.DisposeAsync();
        await VerifyAsync(round, source, target, cancellationToken);
        File.Delete(target);
        return measurement;
    }

    private Task<Measurement> ProxyDownloadAsync(int round, CancellationToken cancellationToken) => ProxyDownloadAsync(round, null, cancellationToken);

    /// <param name="rehearse">First one untimed GET of the whole image, as E1 does for PUTs (`AB,AB-GET,AB-E1`).</param>
    private async Task<Measurement> ProxyDownloadAsync(int round, ProxyVariant? variant, CancellationToken cancellationToken, bool rehearse = false)
    {
        var size = settings.Size;
        await using var qemu = await QemuNbd.StartAsync(_source, NbdSocket, readOnly: true, cancellationToken);
        await using var proxy = await ProxyProcess.StartAsync(settings, NbdSocket, size, tls: false, cancellationToken, variant);
        var url = proxy.Url.ToString();
        await WarmUpOverTcpAsync(proxy.Url, cancellationToken, downloads: true);
        if (rehearse)
        {
            await Curl(cancellationToken, "-o", "/dev/null", url);
        }
        return await MeasureAsync(proxy.Process, size, () => Curl(cancellationToken, "-o", "/dev/null", url));
    }

    private async Task<Measurement> NbdcopyDownloadAsync(int round, CancellationToken cancellationToken)
    {
        await using var qemu = await QemuNbd.StartAsync(_source, NbdSocket, readOnly: true, cancellationToken);
        return await MeasureAsync(null, settings.Size, () => Tool.RunAsync("nbdcopy", [$"nbd+unix:///?socket={NbdSocket}", "null:"], cancellationToken));
    }

    private async Task<Measurement> NbdcopyUploadAsync(string source, string targetDir, int round, CancellationToken cancellationToken, bool rehearse = false)
    {
        var size = new FileInfo(source).Length;
        var target = FreshTarget(targetDir, size);
        Measurement measurement;
        await using (var qemu = await QemuNbd.StartAsync(target, NbdSocket, readOnly: false, cancellationToken))
        {
            if (rehearse)
            {
                await Tool.RunAsync("nbdcopy", ["--flush", source, $"nbd+unix:///?socket={NbdSocket}"], cancellationToken);
                await PunchOutAsync(target, size, cancellationToken);
            }
            // nbdcopy's defaults; --flush because the proxy's PUT flushes (flush=y) before it answers.
            measurement = await MeasureAsync(null, size, () => Tool.RunAsync("nbdcopy", ["--flush", source, $"nbd+unix:///?socket={NbdSocket}"], cancellationToken));
        }
        await VerifyAsync(round, source, target, cancellationToken);
        File.Delete(target);
        return measurement;
    }

    private async Task<Measurement> SinkCurlUploadAsync(bool tls, CancellationToken cancellationToken, bool unix = false)
    {
        await using var sink = await SinkProcess.StartAsync(settings, tls, cancellationToken, unix);
        var url = sink.Url.ToString();
        await WarmUpOverTcpAsync(sink.Url, cancellationToken);
        string[] curlArgs = sink.UnixSocket is string socket ? ["--unix-socket", socket] : TlsArgs(tls);
        return await MeasureAsync(sink.Process, settings.Size, () => Curl(cancellationToken, [.. curlArgs, "-X", "PUT", "--upload-file", _source, url]));
    }

    /// <summary>S5's ceiling: the same curl GET from a bare Kestrel endpoint that sends bytes from memory,
    /// so without NBD reads (SinkServer).</summary>
    private async Task<Measurement> SinkCurlDownloadAsync(CancellationToken cancellationToken)
    {
        await using var sink = await SinkProcess.StartAsync(settings, tls: false, cancellationToken);
        var url = $"{sink.Url}?size={settings.Size}";
        await WarmUpOverTcpAsync(new Uri($"{sink.Url}?size={MiB}"), cancellationToken, downloads: true);
        return await MeasureAsync(sink.Process, settings.Size, () => Curl(cancellationToken, "-o", "/dev/null", url));
    }

    private async Task<Measurement> ProxyWrkAsync(string script, int connections, CancellationToken cancellationToken)
    {
        var target = FreshTarget(Dir, 64 * MiB);
        await using var qemu = await QemuNbd.StartAsync(target, NbdSocket, readOnly: false, cancellationToken);
        await using var proxy = await ProxyProcess.StartAsync(settings, NbdSocket, 64 * MiB, tls: false, cancellationToken);
        var url = proxy.Url + "?flush=n";
        await WarmUpOverTcpAsync(proxy.Url, cancellationToken);
        var measurement = await WrkAsync(proxy.Process, script, connections, url, cancellationToken);
        File.Delete(target);
        return measurement;
    }

    private async Task<Measurement> SinkWrkAsync(string script, int connections, CancellationToken cancellationToken)
    {
        await using var sink = await SinkProcess.StartAsync(settings, tls: false, cancellationToken);
        await WarmUpOverTcpAsync(sink.Url, cancellationToken);
        return await WrkAsync(sink.Process, script, connections, sink.Url + "?flush=n", cancellationToken);
    }

    private async Task<Measurement> WrkAsync(ChildProcess server, string script, int connections, string url, CancellationToken cancellationToken)
    {
        string output = "";
        var threads = Math.Min(connections, Environment.ProcessorCount);
        var measurement = await MeasureAsync(server, 0, async () =>
        {
            output = await Tool.RunAsync("wrk", ["-t", $"{threads}", "-c", $"{connections}", "-d", $"{(int)settings.WrkDuration.TotalSeconds}s",
                "--latency", "-s", script, url], cancellationToken);
        });
        var rps = double.Parse(RequestsPerSecondPattern().Match(output).Groups[1].Value, CultureInfo.InvariantCulture);
        var p99 = P99Pattern().Match(output);
        var p99Ms = double.Parse(p99.Groups[1].Value, CultureInfo.InvariantCulture) * p99.Groups[2].Value switch
        {
            "us" => 0.001,
            "ms" => 1,
            "s" => 1000,
            _ => double.NaN,
        };
        if (NonSuccessPattern().Match(output) is { Success: true } errors)
        {
            throw new InvalidOperationException($"wrk saw failed requests ({errors.Value}):\n{output}");
        }
        return measurement with { RequestsPerSecond = rps, P99Milliseconds = p99Ms };
    }

    // ---------------------------------------------------------------------------------------------
    // Helpers

    private async Task CompareAsync(ComparisonResult result, CancellationToken cancellationToken, int? rounds = null)
    {
        var count = rounds ?? settings.Pairs;
        Log($"{result.Id}: {result.Title}");
        for (var round = 0; round < count; round++)
        {
            var measurements = new Measurement[result.Variants.Count];
            // Rotate who goes first so that page-cache warmth, CPU frequency and neighbours' bursts do
            // not favour one side.
            for (var turn = 0; turn < result.Variants.Count; turn++)
            {
                var index = (turn + round) % result.Variants.Count;
                var m = await result.Variants[index].RunAsync(round, cancellationToken);
                measurements[index] = m;
                Log($"  round {round + 1}: {result.Variants[index].Name,-34} {Describe(m)}");
            }
            result.Rounds.Add(measurements);
        }
        _results.Add(result);
        Log($"  => {result.Id} median ratio to {result.Variants[1].Name}: {ComparisonResult.F(result.MedianRatio(1))}");
    }

    private static async Task<Measurement> MeasureAsync(ChildProcess? server, long bytes, Func<Task> client)
    {
        if (server is not null)
        {
            await WaitForJitToSettleAsync(server);
        }
        var cpuBefore = server?.CpuSeconds();
        var stopwatch = Stopwatch.StartNew();
        await client();
        var seconds = stopwatch.Elapsed.TotalSeconds;
        return new Measurement(seconds, bytes, server is null ? null : server.CpuSeconds() - cpuBefore, server?.PeakRssBytes());
    }

    /// <summary>The timed run starts once the ".NET Tiered Compilation" thread has been idle for 300 ms
    /// (at most 5 s): with only 40 MiB of warm-up it still used 0.2-0.3 CPU-s during each of the first two
    /// 2 GiB uploads, a one-time cost of a fresh process that a long-running daemon does not pay.</summary>
    private static async Task WaitForJitToSettleAsync(ChildProcess server)
    {
        var deadline = Stopwatch.StartNew();
        var last = server.ThreadCpuSeconds(".NET Tiered");
        var quiet = Stopwatch.StartNew();
        while (deadline.Elapsed < TimeSpan.FromSeconds(5) && quiet.Elapsed < TimeSpan.FromMilliseconds(300))
        {
            await Task.Delay(50);
            var now = server.ThreadCpuSeconds(".NET Tiered");
            if (now != last)
            {
                last = now;
                quiet.Restart();
            }
        }
    }

    /// <summary>Brings the fresh server process to steady state before the timed run: 200 PUTs of
    /// 1 MiB on one keep-alive connection, then <see cref="WaitForJitToSettleAsync"/>. A long-running
    /// daemon JITs its data path once; a process started per run would otherwise spend the timed upload
    /// in tiered compilation (perf: the ".NET Tiered Compilation" thread had 23 % of the proxy's samples
    /// with a single 1 MiB warm-up, because per-request methods are promoted after 30 calls and per-chunk
    /// ones are recompiled with profile data later). Unix-socket runs warm up over TCP: the code after
    /// the transport is the same.</summary>
    /// <param name="splicedUploads">Also upload <see cref="SplicedWarmUps"/> bodies of <see cref="SplicedWarmUpSize"/>
    /// at offset 0, large enough to be spliced (1 MiB bodies are copied, so the spliced path would otherwise
    /// be compiled during the timed upload), then zero that range again so that the target is as sparse as
    /// before. What only back-pressure reaches is still compiled in the first large upload (see E1).</param>
    private async Task WarmUpOverTcpAsync(Uri url, CancellationToken cancellationToken, bool downloads = false, bool splicedUploads = false)
    {
        var body = await File.ReadAllBytesAsync(Path.Combine(Dir, "warm.raw"), cancellationToken);
        // Trust exactly the suite's own self-signed certificate.
        using var expected = System.Security.Cryptography.X509Certificates.X509CertificateLoader.LoadCertificateFromFile(settings.CertFile);
        var thumbprint = expected.GetCertHashString();
        using var handler = new SocketsHttpHandler
        {
            SslOptions = { RemoteCertificateValidationCallback = (_, certificate, _, _) => certificate?.GetCertHashString() == thumbprint },
        };
        using var client = new HttpClient(handler);
        var target = new UriBuilder(url) { Query = "flush=n" }.Uri;
        for (var i = 0; i < 200; i++)
        {
            if (downloads)
            {
                // S5's export is read-only: GETs only.
                using var get = new HttpRequestMessage(HttpMethod.Get, url) { Headers = { Range = new(0, body.Length - 1) } };
                using var got = await client.SendAsync(get, cancellationToken);
                await got.EnsureSuccessStatusCode().Content.CopyToAsync(Stream.Null, cancellationToken);
                continue;
            }
            using var content = new ByteArrayContent(body);
            using var response = await client.PutAsync(target, content, cancellationToken);
            response.EnsureSuccessStatusCode();
        }
        if (!splicedUploads)
        {
            return;
        }
        var large = new byte[SplicedWarmUpSize];
        Array.Fill(large, (byte)0x5a);
        for (var i = 0; i < SplicedWarmUps; i++)
        {
            using var content = new ByteArrayContent(large);
            using var response = await client.PutAsync(target, content, cancellationToken);
            response.EnsureSuccessStatusCode();
        }
        // A sparse ticket: WRITE_ZEROES without NO_HOLE, so qemu-nbd punches the range out again.
        using var zero = new StringContent($$"""{"op":"zero","offset":0,"size":{{SplicedWarmUpSize}},"flush":false}""", System.Text.Encoding.UTF8, "application/json");
        using var zeroed = await client.PatchAsync(url, zero, cancellationToken);
        zeroed.EnsureSuccessStatusCode();
    }

    /// <summary>Spliced warm-up uploads: past the 30 calls after which the runtime promotes a method to optimized code.</summary>
    private const int SplicedWarmUps = 40;

    /// <summary>Above Http:MaxRequestBufferSize plus two chunks (3 MiB with the defaults), so it is spliced.</summary>
    private const int SplicedWarmUpSize = (int)(8 * MiB);

    private async Task RecordNegotiatedProtocolAsync(CancellationToken cancellationToken)
    {
        var target = FreshTarget(Dir, 64 * MiB);
        await using var qemu = await QemuNbd.StartAsync(target, NbdSocket, readOnly: false, cancellationToken);
        await using var proxy = await ProxyProcess.StartAsync(settings, NbdSocket, 64 * MiB, tls: true, cancellationToken);
        // No --http1.1: what plain `curl https://…` gets from the service.
        var version = await Tool.RunAsync("curl", ["-sS", "-k", "-o", "/dev/null", "-w", "%{http_version}", "-X", "OPTIONS", proxy.Url.ToString()], cancellationToken);
        _notes.Add($"`curl -k https://…` without `--http1.1` negotiated HTTP/{version.Trim()} with the proxy (its listeners offer HTTP/1.1 only).");
        File.Delete(target);
    }

    private static string[] TlsArgs(bool tls) => tls ? ["-k", "--http1.1"] : [];

    private static Task<string> Curl(CancellationToken cancellationToken, params string[] args) =>
        Tool.RunAsync("curl", ["-sS", "-f", "-o", "/dev/null", .. args], cancellationToken);

    private async Task VerifyAsync(int round, string source, string target, CancellationToken cancellationToken)
    {
        if (round == 0 || settings.VerifyAll)
        {
            await Tool.RunAsync("cmp", [source, target], cancellationToken);
        }
    }

    private static string FreshTarget(string dir, long size)
    {
        Directory.CreateDirectory(dir);
        var target = Path.Combine(dir, "target.raw");
        File.Delete(target);
        using (var file = File.Create(target))
        {
            file.SetLength(size); // a fresh sparse target every run
        }
        return target;
    }

    private static string Describe(Measurement m) =>
        (m.RequestsPerSecond is double rps ? $"{rps:0} req/s p99 {m.P99Milliseconds:0.00} ms" : $"{m.Seconds:0.000} s {m.GiBPerSecond:0.000} GiB/s")
        + (m.ServerCpuSeconds is double cpu ? $" cpu {cpu:0.00} s" : "")
        + (m.CpuSecondsPerGiB is double perGiB ? $" ({perGiB:0.000} s/GiB)" : "")
        + (m.PeakRssBytes is long rss ? $" rss {rss / MiB} MiB" : "");

    private static string Gib(long bytes) => $"{bytes / Measurement.GiB:0.#} GiB";

    private static void Log(string line) => Console.WriteLine($"{DateTime.Now:HH:mm:ss} {line}");

    [GeneratedRegex(@"Requests/sec:\s+([0-9.]+)")]
    private static partial Regex RequestsPerSecondPattern();

    [GeneratedRegex(@"^\s+99%\s+([0-9.]+)(us|ms|s)\s*$", RegexOptions.Multiline)]
    private static partial Regex P99Pattern();

    [GeneratedRegex(@"Non-2xx or 3xx responses: \d+")]
    private static partial Regex NonSuccessPattern();
}
