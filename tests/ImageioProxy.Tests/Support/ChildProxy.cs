using System.Globalization;
using System.Net.Http.Json;
using System.Text.RegularExpressions;
using TestSupport;

namespace ImageioProxy.Tests.Support;

/// <summary>The proxy as a real child process (<c>dotnet ImageioProxy.dll</c>, the build output copied next
/// to the tests), for what an in-process server cannot show: SIGTERM, SIGKILL, and the memory of the process.
/// Plain HTTP on 127.0.0.1 with a free port, local and control sockets in <paramref name="directory"/>.</summary>
public sealed partial class ChildProxy : IAsyncDisposable
{
    /// <summary>Bound on start-up (JIT and two hosts on a loaded 2-core machine).</summary>
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(60);

    private ChildProxy(ExternalProcess process, int port, string controlSocket)
    {
        Process = process;
        Port = port;
        ControlSocket = controlSocket;
        Control = ProxyFixture.UnixClient(controlSocket);
    }

    public ExternalProcess Process { get; }

    public int Port { get; }

    public string ControlSocket { get; }

    /// <summary>HttpClient on the control socket.</summary>
    public HttpClient Control { get; }

    public Uri RemoteUri => new($"http://127.0.0.1:{Port}");

    public string ImageUrl(string ticketId) => $"{RemoteUri}images/{ticketId}";

    /// <summary>Starts the proxy with <paramref name="settings"/> (Section:Key = value) on top of the test
    /// defaults and waits until it logs the port it serves on.</summary>
    public static async Task<ChildProxy> StartAsync(string directory, IReadOnlyDictionary<string, string>? settings = null)
    {
        var controlSocket = Path.Combine(directory, "proxy-control.sock");
        var all = new Dictionary<string, string>
        {
            ["Remote:Host"] = "127.0.0.1",
            ["Remote:Port"] = "0",
            ["Tls:Enable"] = "false",
            ["Local:Socket"] = Path.Combine(directory, "proxy-local.sock"),
            ["Control:Socket"] = controlSocket,
            ["Logging:LogLevel:Default"] = "Information",
        };
        foreach (var (key, value) in settings ?? new Dictionary<string, string>())
        {
            all[key] = value;
        }
        var dll = Path.Combine(AppContext.BaseDirectory, "ImageioProxy.dll");
        var process = ExternalProcess.Start("dotnet", [dll, .. all.Select(p => $"--{p.Key}={p.Value}")], new ExternalProcessOptions
        {
            OutputLimit = 256 * 1024,
            Environment = new Dictionary<string, string?> { ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1", ["ASPNETCORE_ENVIRONMENT"] = null },
        });
        try
        {
            using var timeout = new CancellationTokenSource(StartTimeout);
            while (true)
            {
                if (ServingLine().Match(process.Output) is { Success: true } match)
                {
                    return new ChildProxy(process, int.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture), controlSocket);
                }
                if (process.HasExited)
                {
                    throw new InvalidOperationException($"the proxy exited during start-up. {process.Describe()}");
                }
                await Task.Delay(50, timeout.Token);
            }
        }
        catch
        {
            await process.DisposeAsync();
            throw;
        }
    }

    /// <summary>Installs a ticket through the control socket.</summary>
    public async Task AddTicketAsync(Dictionary<string, object?> ticket)
    {
        using var response = await Control.PutAsJsonAsync($"/tickets/{ticket["uuid"]}", ticket);
        if (!response.IsSuccessStatusCode)
        {
            throw new InvalidOperationException($"PUT /tickets failed: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}");
        }
    }

    /// <summary>Peak resident set size (VmHWM) of the proxy process so far, in bytes.</summary>
    public long PeakResidentBytes() => StatusKilobytes("VmHWM") * 1024;

    /// <summary>Current resident set size (VmRSS), in bytes.</summary>
    public long ResidentBytes() => StatusKilobytes("VmRSS") * 1024;

    private long StatusKilobytes(string field)
    {
        foreach (var line in File.ReadLines($"/proc/{Process.Id}/status"))
        {
            if (line.StartsWith(field + ":", StringComparison.Ordinal))
            {
                return long.Parse(line[(field.Length + 1)..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
            }
        }
        throw new InvalidOperationException($"/proc/{Process.Id}/status has no {field}");
    }

    public async ValueTask DisposeAsync()
    {
        Control.Dispose();
        await Process.DisposeAsync();
    }

    [GeneratedRegex(@"Serving remote=127\.0\.0\.1:(\d+) ")]
    private static partial Regex ServingLine();
}
