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

    public string? Markdown { get; init; }

    public string? Json { get; init; }

    public bool With16GiB { get; init; }

    public bool VerifyAll { get; init; }

    public TimeSpan WrkDuration { get; init; } = TimeSpan.FromSeconds(5);

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
                "--proxy-env" => WithEnvironment(settings, Next()),
                "--only" => settings with { Only = [.. Next().Split(',', StringSplitOptions.RemoveEmptyEntries)] },
                "--markdown" => settings with { Markdown = Next() },
                "--json" => settings with { Json = Next() },
                "--with-16g" => settings with { With16GiB = true },
                "--verify-all" => settings with { VerifyAll = true },
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

    private static BenchSettings WithEnvironment(BenchSettings settings, string assignment)
    {
        var equals = assignment.IndexOf('=', StringComparison.Ordinal);
        if (equals <= 0)
        {
            throw new ArgumentException($"--proxy-env wants NAME=VALUE, not {assignment}");
        }
        var environment = new Dictionary<string, string>(settings.ProxyEnvironment) { [assignment[..equals]] = assignment[(equals + 1)..] };
        return settings with { ProxyEnvironment = environment };
    }
}
