using System.Globalization;

namespace ImageioProxy.Bench;

/// <summary>Command line of the suite. Every option has a default that fits the 10-minute budget on 2 cores.</summary>
internal sealed record BenchSettings
{
    public string WorkDirectory { get; init; } = "/dev/shm/imageio-bench";

    /// <summary>S8's sparse targets live on disk, not tmpfs.</summary>
    public string DiskDirectory { get; init; } = "/var/tmp/imageio-bench";

    public long Size { get; init; } = 2L << 30;

    public int Pairs { get; init; } = 3;

    public string ProxyPath { get; init; } = "";

    public List<string> ProxyArgs { get; init; } = [];

    public List<string> SinkArgs { get; init; } = [];

    public Dictionary<string, string> ProxyEnvironment { get; init; } = [];

    public HashSet<string> Only { get; init; } = [];

    /// <summary>Scenario AB: S1 with the suite's settings (A) against S1 with these on top (B).</summary>
    public List<string> BArgs { get; init; } = [];

    public Dictionary<string, string> BEnvironment { get; init; } = [];

    public string? BProxyPath { get; init; }

    public string? Markdown { get; init; }

    public string? Json { get; init; }

    public bool With16GiB { get; init; }

    public bool VerifyAll { get; init; }

    /// <summary>net.core.wmem_default for the run (restored after; needs root): the send buffer curl's
    /// unix socket gets in S4 (docs/operations.md, "Kernel settings for throughput").</summary>
    public int? ClientSendBuffer { get; init; }

    public TimeSpan WrkDuration { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>GLIBC_TUNABLES of qemu-nbd (scenarios and baselines alike).</summary>
    public string QemuTunables { get; init; } = QemuNbd.DefaultTunables;

    public string CertFile => Path.Combine(WorkDirectory, "cert.pem");

    public string KeyFile => Path.Combine(WorkDirectory, "key.pem");

    public string Command { get; init; } = "";

    public bool Runs(string scenario) => Only.Count == 0 || Only.Contains(scenario);

    public static BenchSettings Parse(string[] args)
    {
        var settings = new BenchSettings { Command = string.Join(' ', args) };
        for (var i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            settings = args[i] switch
            {
                "--proxy" => settings with { ProxyPath = Next() },
                "--dir" => settings with { WorkDirectory = Next() },
                "--disk-dir" => settings with { DiskDirectory = Next() },
                "--size-gib" => settings with { Size = (long)(double.Parse(Next(), CultureInfo.InvariantCulture) * (1L << 30)) },
                "--pairs" => settings with { Pairs = int.Parse(Next(), CultureInfo.InvariantCulture) },
                "--proxy-arg" => settings with { ProxyArgs = [.. settings.ProxyArgs, Next()] },
                "--sink-arg" => settings with { SinkArgs = [.. settings.SinkArgs, Next()] },
                "--proxy-env" => settings with { ProxyEnvironment = With(settings.ProxyEnvironment, Next()) },
                "--b-arg" => settings with { BArgs = [.. settings.BArgs, Next()] },
                "--b-proxy" => settings with { BProxyPath = Next() },
                "--b-env" => settings with { BEnvironment = With(settings.BEnvironment, Next()) },
                "--only" => settings with { Only = [.. Next().Split(',', StringSplitOptions.RemoveEmptyEntries)] },
                "--markdown" => settings with { Markdown = Next() },
                "--json" => settings with { Json = Next() },
                "--with-16g" => settings with { With16GiB = true },
                "--verify-all" => settings with { VerifyAll = true },
                "--qemu-tunables" => settings with { QemuTunables = Next() },
                "--client-wmem" => settings with { ClientSendBuffer = int.Parse(Next(), CultureInfo.InvariantCulture) },
                "--wrk-seconds" => settings with { WrkDuration = TimeSpan.FromSeconds(int.Parse(Next(), CultureInfo.InvariantCulture)) },
                _ => throw new ArgumentException($"unknown argument {args[i]}"),
            };
        }
        if (settings.ProxyPath.Length == 0)
        {
            throw new ArgumentException("--proxy PATH (the ImageioProxy executable) is required; scripts/bench.sh passes it");
        }
        return settings;
    }

    private static Dictionary<string, string> With(Dictionary<string, string> environment, string assignment)
    {
        var equals = assignment.IndexOf('=', StringComparison.Ordinal);
        if (equals <= 0)
        {
            throw new ArgumentException($"environment settings are NAME=VALUE, not {assignment}");
        }
        return new Dictionary<string, string>(environment) { [assignment[..equals]] = assignment[(equals + 1)..] };
    }
}
