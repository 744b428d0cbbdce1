using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;

namespace ImageioProxy.Bench;

/// <summary>A child process the suite measures: its CPU time and peak RSS come from /proc, so they
/// cover exactly that process (the proxy, the sink), not the clients.</summary>
internal sealed class ChildProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private int _disposed;

    private ChildProcess(Process process)
    {
        _process = process;
        _process.OutputDataReceived += (_, e) => Append(e.Data);
        _process.ErrorDataReceived += (_, e) => Append(e.Data);
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    public int Id => _process.Id;

    public bool HasExited => _process.HasExited;

    public string Output
    {
        get { lock (_output) { return _output.ToString(); } }
    }

    public static ChildProcess Start(string file, IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment = null)
    {
        var start = Tool.StartInfo(file, args, environment);
        return new ChildProcess(Process.Start(start) ?? throw new InvalidOperationException($"{file} did not start"));
    }

    /// <summary>User + system CPU seconds so far (/proc/PID/stat fields 14 and 15, in clock ticks of 1/100 s).</summary>
    public double CpuSeconds()
    {
        var stat = File.ReadAllText($"/proc/{Id}/stat");
        // The command name (field 2) may contain spaces; fields after it are counted from its ')'.
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        var ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
        return ticks / 100.0;
    }

    /// <summary>CPU seconds so far of the threads whose name starts with <paramref name="threadName"/>
    /// (/proc/PID/task/*/comm; Linux cuts names to 15 characters).</summary>
    public double ThreadCpuSeconds(string threadName)
    {
        long ticks = 0;
        foreach (var task in Directory.EnumerateDirectories($"/proc/{Id}/task"))
        {
            try
            {
                if (!File.ReadAllText(Path.Combine(task, "comm")).StartsWith(threadName, StringComparison.Ordinal))
                {
                    continue;
                }
                var stat = File.ReadAllText(Path.Combine(task, "stat"));
                var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                ticks += long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
            }
            catch (IOException)
            {
                // The thread ended meanwhile.
            }
        }
        return ticks / 100.0;
    }

    /// <summary>Peak resident set size in bytes (VmHWM).</summary>
    public long PeakRssBytes()
    {
        foreach (var line in File.ReadLines($"/proc/{Id}/status"))
        {
            if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
            {
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
            }
        }
        return 0;
    }

    public async Task WaitForUnixSocketAsync(string path, CancellationToken cancellationToken)
    {
        await WaitUntilAsync(() => File.Exists(path) && CanConnect(new UnixDomainSocketEndPoint(path)), path, cancellationToken);
    }

    public async Task WaitForTcpPortAsync(int port, CancellationToken cancellationToken)
    {
        await WaitUntilAsync(() => CanConnect(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, port)), $"port {port}", cancellationToken);
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return; // scenarios stop qemu-nbd early (to compare the image) and again on the way out
        }
        if (!_process.HasExited)
        {
            // SIGTERM: the proxy flushes and closes its pools; qemu-nbd closes the image.
            using (var kill = Process.Start("kill", ["-TERM", Id.ToString(CultureInfo.InvariantCulture)]))
            {
                await kill.WaitForExitAsync();
            }
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            try
            {
                await _process.WaitForExitAsync(timeout.Token);
            }
            catch (OperationCanceledException)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync(CancellationToken.None);
            }
        }
        _process.Dispose();
    }

    private async Task WaitUntilAsync(Func<bool> ready, string what, CancellationToken cancellationToken)
    {
        var deadline = Stopwatch.StartNew();
        while (!ready())
        {
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"{_process.StartInfo.FileName} exited ({_process.ExitCode}) before {what} was ready:\n{Output}");
            }
            if (deadline.Elapsed > TimeSpan.FromSeconds(60))
            {
                throw new TimeoutException($"{_process.StartInfo.FileName}: {what} not ready after 60 s:\n{Output}");
            }
            await Task.Delay(20, cancellationToken);
        }
    }

    private static bool CanConnect(System.Net.EndPoint endPoint)
    {
        using var socket = endPoint is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.Connect(endPoint);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    private void Append(string? line)
    {
        if (line is null)
        {
            return;
        }
        lock (_output)
        {
            // Keep the tail only: a long run must not hold every log line.
            if (_output.Length > 64 * 1024)
            {
                _output.Remove(0, 32 * 1024);
            }
            _output.AppendLine(line);
        }
    }
}

/// <summary>Runs a tool to completion; fails with its output when it exits non-zero.</summary>
internal static class Tool
{
    /// <summary>How both runners start a process: output captured, arguments unquoted, environment added.</summary>
    public static ProcessStartInfo StartInfo(string file, IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment)
    {
        var start = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[key] = value;
        }
        return start;
    }

    public static async Task<string> RunAsync(string file, IEnumerable<string> args, CancellationToken cancellationToken,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var start = Tool.StartInfo(file, args, environment);
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"{file} did not start");
        var stdout = process.StandardOutput.ReadToEndAsync(cancellationToken);
        var stderr = process.StandardError.ReadToEndAsync(cancellationToken);
        await process.WaitForExitAsync(cancellationToken);
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{file} {string.Join(' ', start.ArgumentList)} exited {process.ExitCode}: {await stderr}{await stdout}");
        }
        return await stdout;
    }

    public static int FreeTcpPort()
    {
        using var listener = new TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
    }
}
