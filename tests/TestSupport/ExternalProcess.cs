using System.Collections.Concurrent;
using System.ComponentModel;
using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;

namespace TestSupport;

/// <summary>Unix signals a test may send to a server.</summary>
public enum ProcessSignal
{
    Hangup = 1,
    Interrupt = 2,
    Kill = 9,
    Terminate = 15,
    Continue = 18,
    Stop = 19,
}

/// <summary>How to start an external process.</summary>
public sealed record ExternalProcessOptions
{
    /// <summary>Variables added to (or, with a null value, removed from) the inherited environment.</summary>
    public IReadOnlyDictionary<string, string?>? Environment { get; init; }

    public string? WorkingDirectory { get; init; }

    /// <summary>Characters of combined stdout/stderr kept for diagnostics (start and end are kept).</summary>
    public int OutputLimit { get; init; } = 64 * 1024;
}

/// <summary>What a finished short-lived command printed.</summary>
public sealed record ProcessResult(string CommandLine, int ExitCode, string StandardOutput, string StandardError)
{
    public bool Succeeded => ExitCode == 0;

    /// <summary>Returns this result, or throws <see cref="ExternalProcessException"/> if the exit code is not 0.</summary>
    public ProcessResult EnsureSuccess()
        => Succeeded ? this : throw new ExternalProcessException($"command failed with exit code {ExitCode}: {this}", this);

    public override string ToString()
        => $"{CommandLine}\n  exit code: {ExitCode}\n  stdout: {Trim(StandardOutput)}\n  stderr: {Trim(StandardError)}";

    private static string Trim(string text) => text.Length <= 4000 ? text.TrimEnd() : text[..4000] + " [...]";
}

/// <summary>An external command failed, timed out or died early; the message carries its output.</summary>
public sealed class ExternalProcessException : Exception
{
    public ExternalProcessException(string message, ProcessResult? result = null, Exception? inner = null)
        : base(message, inner) => Result = result;

    public ProcessResult? Result { get; }
}

/// <summary>
/// A process started without a shell (arguments are passed as a list), with stdin closed and stdout/stderr
/// captured into a bounded buffer for diagnostics. Disposing kills the whole process tree.
/// </summary>
public sealed partial class ExternalProcess : IAsyncDisposable
{
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(20);
    private static readonly TimeSpan DisposeWait = TimeSpan.FromSeconds(10);

    // Processes not yet disposed, killed when the test host exits normally so a test that forgets to
    // dispose does not leave a server behind. (--exit-with-parent covers crashes only on kernels that
    // deliver PR_SET_PDEATHSIG; this machine's does not.)
    private static readonly ConcurrentDictionary<ExternalProcess, byte> Live = new();

    private readonly Process _process;
    private readonly BoundedText _output;
    private int _disposed;
    private int? _exitCodeAtDispose;
    private volatile bool _released;

    static ExternalProcess()
    {
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            foreach (var process in Live.Keys)
            {
                KillTree(process._process);
            }
        };
    }

    private ExternalProcess(Process process, string name, string commandLine, BoundedText output)
    {
        _process = process;
        Name = name;
        CommandLine = commandLine;
        _output = output;
        Id = process.Id;
    }

    /// <summary>Short name of the program (file name without directory).</summary>
    public string Name { get; }

    /// <summary>The command line, quoted for display.</summary>
    public string CommandLine { get; }

    public int Id { get; }

    public bool HasExited => _released || _process.HasExited;

    /// <summary>Exit code, or null while running. Death by signal N reports 128+N (137 for SIGKILL).</summary>
    public int? ExitCode => _released ? _exitCodeAtDispose : _process.HasExited ? _process.ExitCode : null;

    /// <summary>Combined stdout and stderr so far (bounded: the start and the end are kept).</summary>
    public string Output => _output.ToString();

    /// <summary>Starts <paramref name="fileName"/> (a name looked up with <see cref="Tool.Require"/>, or a path).</summary>
    public static ExternalProcess Start(string fileName, IEnumerable<string> arguments, ExternalProcessOptions? options = null)
    {
        options ??= new ExternalProcessOptions();
        var startInfo = CreateStartInfo(fileName, arguments, options);
        var commandLine = FormatCommandLine(startInfo);
        var output = new BoundedText(options.OutputLimit);
        var process = new Process { StartInfo = startInfo };
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                output.AppendLine(e.Data);
            }
        };
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                output.AppendLine(e.Data);
            }
        };

        try
        {
            ProcessSpawner.Start(process);
        }
        catch (Win32Exception e)
        {
            process.Dispose();
            throw new ExternalProcessException($"cannot start {commandLine}: {e.Message}", inner: e);
        }

        process.StandardInput.Close();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        var started = new ExternalProcess(process, Path.GetFileName(startInfo.FileName), commandLine, output);
        Live.TryAdd(started, 0);
        return started;
    }

    /// <summary>Runs a short command to completion and returns everything it printed. On timeout the
    /// process tree is killed and <see cref="TimeoutException"/> is thrown. A non-zero exit code is
    /// returned, not thrown: call <see cref="ProcessResult.EnsureSuccess"/>.</summary>
    public static async Task<ProcessResult> RunAsync(
        string fileName,
        IEnumerable<string> arguments,
        TimeSpan? timeout = null,
        ExternalProcessOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        var limit = timeout ?? TimeSpan.FromMinutes(2);
        var startInfo = CreateStartInfo(fileName, arguments, options ?? new ExternalProcessOptions());
        var commandLine = FormatCommandLine(startInfo);
        using var process = new Process { StartInfo = startInfo };
        try
        {
            process.Start();
        }
        catch (Win32Exception e)
        {
            throw new ExternalProcessException($"cannot start {commandLine}: {e.Message}", inner: e);
        }

        process.StandardInput.Close();
        // Read both pipes concurrently so a chatty stderr cannot block the child on a full pipe.
        var stdout = process.StandardOutput.ReadToEndAsync(CancellationToken.None);
        var stderr = process.StandardError.ReadToEndAsync(CancellationToken.None);

        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(limit);
        try
        {
            await process.WaitForExitAsync(deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            KillTree(process);
            await process.WaitForExitAsync(CancellationToken.None).WaitAsync(DisposeWait, CancellationToken.None).ConfigureAwait(false);
            cancellationToken.ThrowIfCancellationRequested();
            var partial = new ProcessResult(commandLine, -1, await stdout.ConfigureAwait(false), await stderr.ConfigureAwait(false));
            throw new TimeoutException($"command did not finish within {limit.TotalSeconds:0.#} s and was killed: {partial}");
        }

        return new ProcessResult(commandLine, process.ExitCode, await stdout.ConfigureAwait(false), await stderr.ConfigureAwait(false));
    }

    /// <summary>Waits for the process to exit and returns its exit code; throws <see cref="TimeoutException"/>.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        try
        {
            await _process.WaitForExitAsync(deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new TimeoutException($"{Name} did not exit within {timeout.TotalSeconds:0.#} s. {Describe()}");
        }

        return _process.ExitCode;
    }

    /// <summary>Polls until a connect() to the unix socket succeeds (the probe connection is closed at once).
    /// Fails fast, with the process output, if the process exits first.</summary>
    /// <remarks>The probe is a real client: do not use it for servers that exit after their first client
    /// (qemu-nbd without --persistent, nbdkit's exitlast filter); wait for a pid file instead.</remarks>
    public async Task WaitForUnixSocketAsync(string path, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        var endPoint = new UnixDomainSocketEndPoint(path);
        await PollAsync($"a connection to {path}", timeout, async ct =>
        {
            if (!File.Exists(path))
            {
                return false;
            }

            using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await socket.ConnectAsync(endPoint, ct).ConfigureAwait(false);
                return true;
            }
            catch (SocketException)
            {
                return false;
            }
        }, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Polls until <paramref name="path"/> exists and holds at least one complete line (a pid file:
    /// nbdkit and qemu-nbd write it once they listen). Returns the file's first line.</summary>
    public async Task<string> WaitForFileAsync(string path, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        string? firstLine = null;
        await PollAsync($"file {path}", timeout, async ct =>
        {
            if (!File.Exists(path))
            {
                return false;
            }

            var text = await File.ReadAllTextAsync(path, ct).ConfigureAwait(false);
            var newline = text.IndexOf('\n', StringComparison.Ordinal);
            if (newline < 0)
            {
                return false;
            }

            firstLine = text[..newline];
            return true;
        }, cancellationToken).ConfigureAwait(false);
        return firstLine!;
    }

    /// <summary>Sends a signal. SIGKILL kills only this process (use <see cref="DisposeAsync"/> for the tree).
    /// Does nothing if the process has already exited.</summary>
    public void Kill(ProcessSignal signal = ProcessSignal.Kill)
    {
        if (HasExited)
        {
            return;
        }

        if (signal == ProcessSignal.Kill)
        {
            try
            {
                _process.Kill(entireProcessTree: false);
            }
            catch (InvalidOperationException)
            {
                // exited meanwhile
            }

            return;
        }

        if (SendSignal(Id, (int)signal) != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            const int Esrch = 3;
            if (errno != Esrch)
            {
                throw new InvalidOperationException($"kill({Id}, {signal}) failed: errno {errno}");
            }
        }
    }

    /// <summary>SIGTERM, then SIGKILL of the whole tree if it is still running after <paramref name="grace"/>
    /// (default 5 s). Returns the exit code.</summary>
    public async Task<int> StopAsync(TimeSpan? grace = null)
    {
        if (!_process.HasExited)
        {
            Kill(ProcessSignal.Terminate);
            try
            {
                await _process.WaitForExitAsync(CancellationToken.None).WaitAsync(grace ?? TimeSpan.FromSeconds(5)).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                KillTree(_process);
                await _process.WaitForExitAsync(CancellationToken.None).WaitAsync(DisposeWait).ConfigureAwait(false);
            }
        }

        return _process.ExitCode;
    }

    /// <summary>A multi-line description for assertion messages: name, pid, exit code, command and output.</summary>
    public string Describe()
    {
        var state = ExitCode is { } code ? $"exit code {code}" : HasExited ? "disposed" : "running";
        return $"{Name} (pid {Id}, {state})\n  command: {CommandLine}\n  output:\n{Output}";
    }

    public override string ToString() => $"{Name} (pid {Id})";

    /// <summary>Kills the process tree if it is still running and waits (bounded) for it to exit.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        KillTree(_process);
        try
        {
            await _process.WaitForExitAsync(CancellationToken.None).WaitAsync(DisposeWait).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // Nothing more we can do; do not hang the test run.
        }

        Live.TryRemove(this, out _);
        _exitCodeAtDispose = _process.HasExited ? _process.ExitCode : null;
        _released = true;
        _process.Dispose();
    }

    private async Task PollAsync(string what, TimeSpan timeout, Func<CancellationToken, Task<bool>> ready, CancellationToken cancellationToken)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        try
        {
            while (true)
            {
                if (await ready(deadline.Token).ConfigureAwait(false))
                {
                    return;
                }

                if (_process.HasExited)
                {
                    // Let the output readers drain so the message says why it died.
                    await _process.WaitForExitAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(2), CancellationToken.None).ConfigureAwait(false);
                    throw new ExternalProcessException($"{Name} exited before {what} was ready. {Describe()}");
                }

                await Task.Delay(PollInterval, deadline.Token).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new TimeoutException($"waited {timeout.TotalSeconds:0.#} s for {what}. {Describe()}");
        }
    }

    private static ProcessStartInfo CreateStartInfo(string fileName, IEnumerable<string> arguments, ExternalProcessOptions options)
    {
        var startInfo = new ProcessStartInfo
        {
            FileName = fileName.Contains('/', StringComparison.Ordinal) ? fileName : Tool.Require(fileName),
            UseShellExecute = false,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
        };
        foreach (var argument in arguments)
        {
            startInfo.ArgumentList.Add(argument);
        }

        if (options.WorkingDirectory is not null)
        {
            startInfo.WorkingDirectory = options.WorkingDirectory;
        }

        foreach (var (key, value) in options.Environment ?? new Dictionary<string, string?>())
        {
            if (value is null)
            {
                startInfo.Environment.Remove(key);
            }
            else
            {
                startInfo.Environment[key] = value;
            }
        }

        return startInfo;
    }

    private static string FormatCommandLine(ProcessStartInfo startInfo)
        => string.Join(' ', startInfo.ArgumentList.Prepend(startInfo.FileName).Select(Quote));

    private static string Quote(string argument)
        => argument.Length > 0 && argument.All(c => char.IsAsciiLetterOrDigit(c) || "-_./=:,@%+".Contains(c, StringComparison.Ordinal))
            ? argument
            : "'" + argument.Replace("'", "'\\''", StringComparison.Ordinal) + "'";

    private static void KillTree(Process process)
    {
        try
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }
        catch (InvalidOperationException)
        {
            // exited meanwhile
        }
        catch (Win32Exception)
        {
            // raced with exit
        }
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int SendSignal(int pid, int signal);
}
