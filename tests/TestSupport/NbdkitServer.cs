using System.Net.Sockets;

namespace TestSupport;

/// <summary>How to run nbdkit (see docs/nbd-fault-injection.md for tested recipes).</summary>
public sealed record NbdkitOptions
{
    /// <summary>Filters, outermost first (nbdkit 1.32: put multi-conn before log). "pause" and "log" get a
    /// control socket / log file in the server's directory unless pause-control= / logfile= is given.</summary>
    public IReadOnlyList<string> Filters { get; init; } = [];

    /// <summary>Server options placed before the plugin, e.g. "--no-sr", "-r", "--mask-handshake=0", "-t", "4".</summary>
    public IReadOnlyList<string> ServerArgs { get; init; } = [];

    /// <summary>X.509 directory (ca-cert.pem, server-cert.pem, server-key.pem): --tls-certificates.</summary>
    public string? TlsCertificatesDirectory { get; init; }

    /// <summary>PSK file (username:hexkey lines): --tls-psk.</summary>
    public string? TlsPskFile { get; init; }

    /// <summary>--tls mode when credentials are given: "require" (default) or "on" (TLS optional).</summary>
    public string TlsMode { get; init; } = "require";

    /// <summary>--tls-verify-peer: demand a client certificate.</summary>
    public bool TlsVerifyPeer { get; init; }

    /// <summary>Export name to put in the URIs (nbdkit serves any name unless a filter restricts it).</summary>
    public string ExportName { get; init; } = "";

    /// <summary>Listen on 127.0.0.1 with a free port instead of a unix socket.</summary>
    public bool Tcp { get; init; }

    public IReadOnlyDictionary<string, string?>? Environment { get; init; }

    public TimeSpan StartTimeout { get; init; } = TimeSpan.FromSeconds(20);
}

/// <summary>nbdkit in the foreground (-f, --exit-with-parent), on a unix socket in its own directory.</summary>
public sealed class NbdkitServer : NbdServer
{
    private static readonly TimeSpan ControlTimeout = TimeSpan.FromSeconds(30);

    private NbdkitServer(ExternalProcess process, TempDirectory directory, string? socketPath, int? port, NbdkitOptions options, string? pauseControlPath, string? logFilePath)
        : base(process, directory, socketPath, port, options.ExportName, options.TlsCertificatesDirectory is not null || options.TlsPskFile is not null)
    {
        Options = options;
        PauseControlPath = pauseControlPath;
        LogFilePath = logFilePath;
    }

    public NbdkitOptions Options { get; }

    /// <summary>The pause filter's control socket, or null without the pause filter.</summary>
    public string? PauseControlPath { get; }

    /// <summary>The log filter's log file, or null without the log filter.</summary>
    public string? LogFilePath { get; }

    /// <summary>Starts nbdkit. <paramref name="pluginAndArgs"/> is the plugin then its (and the filters')
    /// key=value parameters, e.g. <c>["memory", "64M", "error-rate=10%"]</c>.</summary>
    public static async Task<NbdkitServer> StartAsync(IReadOnlyList<string> pluginAndArgs, NbdkitOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfZero(pluginAndArgs.Count);
        options ??= new NbdkitOptions();
        var tool = Tool.Require("nbdkit");
        var directory = TempDirectory.Create("nbdk");
        try
        {
            var socketPath = options.Tcp ? null : directory.SocketPath();
            var pidFile = directory.Combine("nbdkit.pid");
            var parameters = pluginAndArgs.ToList();
            var pauseControl = FilterParameter(options, parameters, "pause", "pause-control", directory.SocketPath("pause.ctl"));
            var logFile = FilterParameter(options, parameters, "log", "logfile", directory.Combine("nbdkit.log"));

            var (process, port) = await StartListeningAsync(
                tool,
                port => BuildArguments(options, socketPath, port, pidFile, parameters),
                options.Tcp,
                pidFile,
                new ExternalProcessOptions { Environment = options.Environment },
                options.StartTimeout,
                cancellationToken).ConfigureAwait(false);
            return new NbdkitServer(process, directory, socketPath, port, options, pauseControl, logFile);
        }
        catch
        {
            directory.Dispose();
            throw;
        }
    }

    /// <summary>Pauses request processing (pause filter). Returns once nbdkit answers 'P', which it does only
    /// after the requests received before the pause have completed. Later requests hang until resumed.</summary>
    public Task PauseAsync(CancellationToken cancellationToken = default) => SendControlAsync('p', 'P', cancellationToken);

    /// <summary>Resumes request processing (pause filter); returns once nbdkit answers 'R'.</summary>
    public Task ResumeAsync(CancellationToken cancellationToken = default) => SendControlAsync('r', 'R', cancellationToken);

    /// <summary>The log filter's file so far (one line per request and reply; see recipe 5).</summary>
    public async Task<string> ReadLogAsync(CancellationToken cancellationToken = default)
    {
        var path = LogFilePath ?? throw new InvalidOperationException("nbdkit was started without --filter=log");
        if (!File.Exists(path))
        {
            return "";
        }

        await using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var reader = new StreamReader(stream);
        return await reader.ReadToEndAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The log filter's lines so far.</summary>
    public async Task<IReadOnlyList<string>> ReadLogLinesAsync(CancellationToken cancellationToken = default)
        => (await ReadLogAsync(cancellationToken).ConfigureAwait(false)).Split('\n', StringSplitOptions.RemoveEmptyEntries);

    private async Task SendControlAsync(char command, char expected, CancellationToken cancellationToken)
    {
        var path = PauseControlPath ?? throw new InvalidOperationException("nbdkit was started without --filter=pause");
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(ControlTimeout);
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), deadline.Token).ConfigureAwait(false);
            await socket.SendAsync(new[] { (byte)command }, SocketFlags.None, deadline.Token).ConfigureAwait(false);
            var reply = new byte[1];
            var read = await socket.ReceiveAsync(reply, SocketFlags.None, deadline.Token).ConfigureAwait(false);
            if (read != 1 || reply[0] != (byte)expected)
            {
                var got = read == 1 ? $"'{(char)reply[0]}'" : "end of stream";
                throw new InvalidOperationException($"pause filter answered {got} to '{command}', expected '{expected}'. {Process.Describe()}");
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new TimeoutException($"pause filter did not answer '{command}' within {ControlTimeout.TotalSeconds} s "
                + $"(a pause waits for in-flight requests to finish). {Process.Describe()}");
        }
    }

    /// <summary>If <paramref name="filter"/> is used, returns the value of its path parameter, adding one
    /// that points into the server's directory when the caller did not give it.</summary>
    private static string? FilterParameter(NbdkitOptions options, List<string> parameters, string filter, string key, string defaultValue)
    {
        if (!options.Filters.Contains(filter, StringComparer.Ordinal))
        {
            return null;
        }

        var prefix = key + "=";
        var given = parameters.FirstOrDefault(p => p.StartsWith(prefix, StringComparison.Ordinal));
        if (given is not null)
        {
            return given[prefix.Length..];
        }

        parameters.Add(prefix + defaultValue);
        return defaultValue;
    }

    private static List<string> BuildArguments(NbdkitOptions options, string? socketPath, int? port, string pidFile, List<string> parameters)
    {
        var args = new List<string> { "--foreground", "--exit-with-parent", $"--pidfile={pidFile}" };
        if (socketPath is not null)
        {
            args.Add($"--unix={socketPath}");
        }
        else
        {
            args.AddRange(["--ipaddr=127.0.0.1", $"--port={port}"]);
        }

        args.AddRange(options.Filters.Select(f => $"--filter={f}"));
        if (options.TlsCertificatesDirectory is not null || options.TlsPskFile is not null)
        {
            args.Add($"--tls={options.TlsMode}");
        }

        if (options.TlsCertificatesDirectory is { } certificates)
        {
            args.Add($"--tls-certificates={Path.GetFullPath(certificates)}");
        }

        if (options.TlsPskFile is { } psk)
        {
            args.Add($"--tls-psk={Path.GetFullPath(psk)}");
        }

        if (options.TlsVerifyPeer)
        {
            args.Add("--tls-verify-peer");
        }

        args.AddRange(options.ServerArgs);
        args.AddRange(parameters);
        return args;
    }
}
