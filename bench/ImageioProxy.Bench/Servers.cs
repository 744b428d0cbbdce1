using System.Text.Json;

namespace ImageioProxy.Bench;

/// <summary>qemu-nbd as every scenario and its baseline start it: the same options, format and malloc
/// tuning, so the only difference between a scenario and its baseline is the path in front of it.</summary>
internal static class QemuNbd
{
    /// <summary>The issue's setting: a fixed mmap threshold, so qemu-nbd's request buffers come from the heap
    /// from the first request on (with glibc's dynamic threshold the baseline moved 1.5–2× with earlier
    /// traffic). Fixing it also fixes the trim threshold at 128 KiB (mallopt(3)); docs/benchmarks.md, "qemu-nbd's
    /// heap", has what that costs and what `--qemu-tunables` changes.</summary>
    public const string DefaultTunables = "glibc.malloc.mmap_threshold=33554432";

    /// <summary>GLIBC_TUNABLES of every qemu-nbd of the run, scenario and baseline alike.</summary>
    public static string Tunables { get; set; } = DefaultTunables;

    public static IReadOnlyDictionary<string, string> Environment => new Dictionary<string, string>
    {
        ["GLIBC_TUNABLES"] = Tunables,
    };

    public static IReadOnlyList<string> Arguments(string image, string socket, bool readOnly) =>
        [.. new[] { "-f", "raw", "--persistent", "--shared=8", "--cache=none", "--aio=native" }, .. readOnly ? new[] { "-r" } : [], "-k", socket, image];

    public static async Task<ChildProcess> StartAsync(string image, string socket, bool readOnly, CancellationToken cancellationToken)
    {
        File.Delete(socket);
        var process = ChildProcess.Start("qemu-nbd", Arguments(image, socket, readOnly), Environment);
        await process.WaitForUnixSocketAsync(socket, cancellationToken);
        return process;
    }
}

/// <summary>The proxy as a separate process (so its CPU time and RSS are its own), with one ticket for
/// the export, plain HTTP or HTTPS on a loopback port and the local unix socket.</summary>
internal sealed class ProxyProcess(ChildProcess process, int port, string localSocket, string ticketId, bool tls) : IAsyncDisposable
{
    private static readonly string[] ReadWrite = ["read", "write"];

    public ChildProcess Process { get; } = process;

    public string LocalSocket { get; } = localSocket;

    public Uri Url { get; } = new($"{(tls ? "https" : "http")}://localhost:{port}/images/{ticketId}");

    /// <summary>The URL to use with curl --unix-socket.</summary>
    public string LocalUrl { get; } = $"http://localhost/images/{ticketId}";

    public static async Task<ProxyProcess> StartAsync(BenchSettings settings, string nbdSocket, long size, bool tls,
        CancellationToken cancellationToken, ProxyVariant? variant = null)
    {
        var dir = settings.WorkDirectory;
        var ticketId = Guid.NewGuid().ToString();
        var ticketFile = Path.Combine(dir, "ticket.json");
        await File.WriteAllTextAsync(ticketFile, JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["uuid"] = ticketId,
            ["size"] = size,
            ["ops"] = ReadWrite,
            ["timeout"] = 3600,
            ["inactivity_timeout"] = 3600,
            ["url"] = $"nbd:unix:{nbdSocket}",
            ["sparse"] = true,
            ["transfer_id"] = "bench",
        }), cancellationToken);
        var port = Tool.FreeTcpPort();
        var localSocket = Path.Combine(dir, "local.sock");
        File.Delete(localSocket);
        var args = new List<string>
        {
            "--Remote:Host=localhost", $"--Remote:Port={port}", $"--Tls:Enable={tls}",
            $"--Local:Socket={localSocket}", "--Control:Enable=false", $"--Daemon:TicketFile={ticketFile}",
        };
        if (tls)
        {
            args.Add($"--Tls:CertFile={settings.CertFile}");
            args.Add($"--Tls:KeyFile={settings.KeyFile}");
        }
        args.AddRange(settings.ProxyArgs);
        var environment = new Dictionary<string, string>(settings.ProxyEnvironment);
        if (variant is not null)
        {
            args.AddRange(variant.Args);
            foreach (var (key, value) in variant.Environment)
            {
                environment[key] = value;
            }
        }
        var process = ChildProcess.Start(variant?.ProxyPath ?? settings.ProxyPath, args, environment);
        try
        {
            await process.WaitForTcpPortAsync(port, cancellationToken);
            await process.WaitForUnixSocketAsync(localSocket, cancellationToken);
        }
        catch
        {
            await process.DisposeAsync();
            throw;
        }
        return new ProxyProcess(process, port, localSocket, ticketId, tls);
    }

    public ValueTask DisposeAsync() => Process.DisposeAsync();
}

/// <summary>The HTTP ceiling: this program's "sink" mode as a separate process, a bare Kestrel endpoint
/// that reads and discards every request body (SinkServer).</summary>
internal sealed class SinkProcess(ChildProcess process, int port, bool tls, string? unixSocket) : IAsyncDisposable
{
    public ChildProcess Process { get; } = process;

    /// <summary>The sink's unix socket, when started with one (S4's ceiling).</summary>
    public string? UnixSocket { get; } = unixSocket;

    public Uri Url { get; } = new($"{(tls ? "https" : "http")}://localhost:{port}/images/sink");

    public static async Task<SinkProcess> StartAsync(BenchSettings settings, bool tls, CancellationToken cancellationToken, bool unix = false)
    {
        var port = Tool.FreeTcpPort();
        var args = new List<string> { "sink", "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture) };
        if (tls)
        {
            args.AddRange(["--cert", settings.CertFile, "--key", settings.KeyFile]);
        }
        var unixSocket = unix ? Path.Combine(settings.WorkDirectory, "sink.sock") : null;
        if (unixSocket is not null)
        {
            File.Delete(unixSocket);
            args.AddRange(["--unix", unixSocket]);
        }
        args.AddRange(settings.SinkArgs);
        // This program again, through its apphost or through `dotnet ImageioProxy.Bench.dll`.
        var self = System.Environment.ProcessPath!;
        if (Path.GetFileNameWithoutExtension(self) == "dotnet")
        {
            args.Insert(0, typeof(SinkProcess).Assembly.Location);
        }
        var process = ChildProcess.Start(self, args, settings.ProxyEnvironment);
        try
        {
            await process.WaitForTcpPortAsync(port, cancellationToken);
            if (unixSocket is not null)
            {
                await process.WaitForUnixSocketAsync(unixSocket, cancellationToken);
            }
        }
        catch
        {
            await process.DisposeAsync();
            throw;
        }
        return new SinkProcess(process, port, tls, unixSocket);
    }

    public ValueTask DisposeAsync() => Process.DisposeAsync();
}

/// <summary>Settings on top of the suite's, for the A/B comparison of one tuning (scenario AB).</summary>
/// <param name="ProxyPath">Another build of the proxy, e.g. the commit before a change.</param>
internal sealed record ProxyVariant(IReadOnlyList<string> Args, IReadOnlyDictionary<string, string> Environment, string? ProxyPath = null);
