using System.Net;
using System.Net.Sockets;
using System.Text;

namespace TestSupport;

/// <summary>A real NBD server process (qemu-nbd or nbdkit) owned by a test, listening on a unix socket in
/// its own temporary directory (or on a loopback TCP port). Disposing kills it and deletes the directory.</summary>
public abstract class NbdServer : IAsyncDisposable
{
    private readonly TempDirectory _directory;
    private readonly string? _socketPath;

    private protected NbdServer(ExternalProcess process, TempDirectory directory, string? socketPath, int? tcpPort, string exportName, bool tls)
    {
        Process = process;
        _directory = directory;
        _socketPath = socketPath;
        TcpPort = tcpPort;
        ExportName = exportName;
        RequiresTls = tls;
    }

    /// <summary>The server process (output, exit code, signals).</summary>
    public ExternalProcess Process { get; }

    /// <summary>The server's private temporary directory (socket, pid file, logs).</summary>
    public string WorkDirectory => _directory.Path;

    /// <summary>The unix socket the server listens on. Throws if it listens on TCP.</summary>
    public string SocketPath => _socketPath
        ?? throw new InvalidOperationException($"{Process.Name} listens on TCP port {TcpPort}, not on a unix socket");

    /// <summary>The loopback TCP port the server listens on (127.0.0.1), or null for a unix socket.</summary>
    public int? TcpPort { get; }

    /// <summary>The export name put in <see cref="Uri"/> and <see cref="ImageioUrl"/> ("" = default export).</summary>
    public string ExportName { get; }

    /// <summary>True if the server was started with TLS required.</summary>
    public bool RequiresTls { get; }

    /// <summary>NBD URI: <c>nbd+unix:///EXPORT?socket=PATH</c>, <c>nbd://127.0.0.1:PORT/EXPORT</c>, or the
    /// <c>nbds</c> forms when TLS is required.</summary>
    public string Uri => NbdUris.Standard(_socketPath, TcpPort, ExportName, RequiresTls);

    /// <summary>imageio ticket URL: <c>nbd:unix:/PATH[:exportname=NAME]</c> or <c>nbd:127.0.0.1:PORT[:exportname=NAME]</c>.</summary>
    public string ImageioUrl => NbdUris.Imageio(_socketPath, TcpPort, ExportName);

    /// <summary>What the server printed so far (bounded).</summary>
    public string Output => Process.Output;

    /// <summary>Sends a signal to the server (SIGKILL by default), e.g. to kill it mid-transfer.</summary>
    public void Kill(ProcessSignal signal = ProcessSignal.Kill) => Process.Kill(signal);

    /// <summary>SIGTERM, then SIGKILL after <paramref name="grace"/>; returns the exit code.</summary>
    public Task<int> StopAsync(TimeSpan? grace = null) => Process.StopAsync(grace);

    public override string ToString() => $"{Process.Name} (pid {Process.Id}) at {Uri}";

    public async ValueTask DisposeAsync()
    {
        await Process.DisposeAsync().ConfigureAwait(false);
        _directory.Dispose();
        GC.SuppressFinalize(this);
    }

    /// <summary>Starts a server, waiting for its pid file (both servers write it once they listen, so no
    /// probe connection is made: that matters for qemu-nbd without --persistent and nbdkit's exitlast).
    /// On TCP, a port taken between choosing and binding it is retried with another port.</summary>
    private protected static async Task<(ExternalProcess Process, int? Port)> StartListeningAsync(
        string tool,
        Func<int?, IReadOnlyList<string>> arguments,
        bool tcp,
        string pidFile,
        ExternalProcessOptions processOptions,
        TimeSpan startTimeout,
        CancellationToken cancellationToken)
    {
        for (var attempt = 1; ; attempt++)
        {
            int? port = tcp ? FreeLoopbackPort() : null;
            var process = ExternalProcess.Start(tool, arguments(port), processOptions);
            try
            {
                await process.WaitForFileAsync(pidFile, startTimeout, cancellationToken).ConfigureAwait(false);
                return (process, port);
            }
            catch (ExternalProcessException) when (tcp && attempt < 3 && process.Output.Contains("in use", StringComparison.OrdinalIgnoreCase))
            {
                await process.DisposeAsync().ConfigureAwait(false);
            }
            catch
            {
                await process.DisposeAsync().ConfigureAwait(false);
                throw;
            }
        }
    }

    private static int FreeLoopbackPort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}

/// <summary>Formats NBD URIs the way libnbd and imageio read them.</summary>
internal static class NbdUris
{
    public static string Standard(string? socketPath, int? port, string exportName, bool tls)
    {
        var scheme = tls ? "nbds" : "nbd";
        return socketPath is not null
            ? $"{scheme}+unix:///{Escape(exportName, keepSlash: true)}?socket={Escape(socketPath, keepSlash: true)}"
            : $"{scheme}://127.0.0.1:{port}/{Escape(exportName, keepSlash: true)}";
    }

    public static string Imageio(string? socketPath, int? port, string exportName)
    {
        var address = socketPath is not null ? $"nbd:unix:{socketPath}" : $"nbd:127.0.0.1:{port}";
        return exportName.Length == 0 ? address : $"{address}:exportname={exportName}";
    }

    /// <summary>Percent-encodes everything except RFC 3986 unreserved characters (and '/').</summary>
    public static string Escape(string value, bool keepSlash)
    {
        var builder = new StringBuilder(value.Length);
        foreach (var b in Encoding.UTF8.GetBytes(value))
        {
            var c = (char)b;
            if (char.IsAsciiLetterOrDigit(c) || c is '-' or '.' or '_' or '~' || (keepSlash && c == '/'))
            {
                builder.Append(c);
            }
            else
            {
                builder.Append('%').Append(b.ToString("X2", System.Globalization.CultureInfo.InvariantCulture));
            }
        }

        return builder.ToString();
    }
}
