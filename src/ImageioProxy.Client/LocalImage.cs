using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text.Json;
using NbdClient;

namespace ImageioProxy.Client;

/// <summary>What <c>qemu-img info</c> says about a local image.</summary>
public sealed record LocalImageInfo(string Format, long VirtualSize);

/// <summary>A local image served by a private qemu-nbd on a unix socket in a temporary directory, and an
/// NbdPool connected to it. Disposing it closes the pool, stops qemu-nbd (SIGTERM, then SIGKILL) and removes
/// the directory, so that an interrupted transfer leaves no process behind.</summary>
public sealed class LocalImage : IAsyncDisposable
{
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(10);

    private readonly Process _qemuNbd;
    private readonly string _directory;
    private readonly Task<string> _stderr;

    private LocalImage(Process qemuNbd, string directory, Task<string> stderr, NbdPool pool, string format)
    {
        _qemuNbd = qemuNbd;
        _directory = directory;
        _stderr = stderr;
        Pool = pool;
        Format = format;
    }

    public NbdPool Pool { get; }

    public string Format { get; }

    public long Size => Pool.Export.Size;

    /// <summary>qemu-nbd's process id (for tests that check it is gone after an interruption).</summary>
    public int QemuNbdProcessId => _qemuNbd.Id;

    /// <summary><c>qemu-img info --output=json</c>.</summary>
    public static async Task<LocalImageInfo> InspectAsync(string path, string? format, CancellationToken cancellationToken)
    {
        if (!File.Exists(path))
        {
            throw new ImageioClientException(ImageioErrorKind.Local, $"{path} does not exist");
        }
        List<string> args = ["info", "--output=json"];
        if (format is not null)
        {
            args.AddRange(["-f", format]);
        }
        args.Add(path);
        var json = await RunToolAsync("qemu-img", args, cancellationToken).ConfigureAwait(false);
        try
        {
            using var document = JsonDocument.Parse(json);
            var root = document.RootElement;
            return new LocalImageInfo(root.GetProperty("format").GetString()!, root.GetProperty("virtual-size").GetInt64());
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
        {
            throw new ImageioClientException(ImageioErrorKind.Local, $"qemu-img info {path} printed no usable JSON: {e.Message}", inner: e);
        }
    }

    /// <summary><c>qemu-img create -f FORMAT PATH SIZE</c>.</summary>
    public static Task CreateAsync(string path, string format, long size, CancellationToken cancellationToken) =>
        RunToolAsync("qemu-img", ["create", "-q", "-f", format, path, size.ToString(CultureInfo.InvariantCulture)], cancellationToken);

    /// <summary>Starts <c>qemu-nbd --persistent --shared=8 -f FORMAT</c> on a private socket and connects a pool
    /// of <paramref name="connections"/> to it.</summary>
    public static async Task<LocalImage> OpenAsync(string path, string format, bool readOnly, int connections, CancellationToken cancellationToken)
    {
        var directory = Directory.CreateTempSubdirectory("imageio-client-").FullName;
        var socket = Path.Combine(directory, "nbd.sock");
        var start = new ProcessStartInfo("qemu-nbd")
        {
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        List<string> args = ["--persistent", "--shared=8", $"--format={format}", $"--socket={socket}"];
        if (readOnly)
        {
            args.Add("--read-only");
        }
        else
        {
            // A new local image: the page cache is fine, the final NBD flush makes it durable.
            args.AddRange(["--cache=writeback", "--discard=unmap"]);
        }
        args.Add(Path.GetFullPath(path));
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        // Big NBD buffers otherwise come from brk and fragment qemu-nbd's heap.
        start.Environment["GLIBC_TUNABLES"] = "glibc.malloc.mmap_threshold=33554432";

        Process process;
        try
        {
            process = Process.Start(start) ?? throw new ImageioClientException(ImageioErrorKind.Local, "qemu-nbd did not start");
        }
        catch (Win32Exception e)
        {
            Directory.Delete(directory, recursive: true);
            throw new ImageioClientException(ImageioErrorKind.Local, "qemu-nbd is not installed; install qemu-utils (apt-get install qemu-utils)", inner: e);
        }
        var stderr = process.StandardError.ReadToEndAsync(CancellationToken.None);
        NbdPool? pool = null;
        try
        {
            await WaitForSocketAsync(process, socket, stderr, cancellationToken).ConfigureAwait(false);
            var endpoint = new NbdEndpoint(new UnixDomainSocketEndPoint(socket), "");
            pool = await NbdPool.ConnectAsync(endpoint, new NbdPoolOptions { MaxConnections = connections }, cancellationToken).ConfigureAwait(false);
            return new LocalImage(process, directory, stderr, pool, format);
        }
        catch (Exception e)
        {
            if (pool is not null)
            {
                await pool.DisposeAsync().ConfigureAwait(false);
            }
            await StopAsync(process).ConfigureAwait(false);
            process.Dispose();
            Directory.Delete(directory, recursive: true);
            if (e is NbdException)
            {
                throw new ImageioClientException(ImageioErrorKind.Local, $"cannot read {path} through qemu-nbd: {e.Message}", inner: e);
            }
            throw;
        }
    }

    /// <summary>Extents of [offset, offset+length) from base:allocation; holes and zeroes both read as zero.</summary>
    public async Task<IReadOnlyList<ImageExtent>> GetExtentsAsync(long offset, long length, CancellationToken cancellationToken)
    {
        if (!Pool.Export.CanBlockStatus)
        {
            return [new ImageExtent(offset, length, Zero: false)];
        }
        var extents = await Pool.GetExtentsAsync(offset, length, cancellationToken: cancellationToken).ConfigureAwait(false);
        return [.. extents.Select(e => new ImageExtent(e.Offset, e.Length,
            (e.Flags & NbdMetaContexts.StateZero) != 0, (e.Flags & NbdMetaContexts.StateHole) != 0))];
    }

    /// <summary>Flushes (if writable), then stops qemu-nbd with SIGTERM so that it closes the image cleanly.</summary>
    public async ValueTask DisposeAsync()
    {
        try
        {
            await Pool.DisposeAsync().ConfigureAwait(false);
        }
        finally
        {
            await StopAsync(_qemuNbd).ConfigureAwait(false);
            await _stderr.ConfigureAwait(false);
            _qemuNbd.Dispose();
            try
            {
                Directory.Delete(_directory, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }

    private static async Task WaitForSocketAsync(Process process, string socket, Task<string> stderr, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(StartTimeout);
        // The socket file appears at bind(), a moment before listen(): wait until a connect succeeds.
        while (!File.Exists(socket) || !await CanConnectAsync(socket, cancellationToken).ConfigureAwait(false))
        {
            if (process.HasExited)
            {
                throw new ImageioClientException(ImageioErrorKind.Local, $"qemu-nbd failed: {(await stderr.ConfigureAwait(false)).Trim()}");
            }
            try
            {
                await Task.Delay(10, timeout.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                throw new ImageioClientException(ImageioErrorKind.Local, $"qemu-nbd did not create its socket within {StartTimeout.TotalSeconds:0} s");
            }
        }
    }

    private static async Task<bool> CanConnectAsync(string path, CancellationToken cancellationToken)
    {
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await probe.ConnectAsync(new UnixDomainSocketEndPoint(path), cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    private static async Task StopAsync(Process process)
    {
        if (process.HasExited)
        {
            return;
        }
        // SIGTERM lets qemu-nbd close the image cleanly (Process.Kill only sends SIGKILL).
        try
        {
            using var kill = Process.Start("kill", ["-TERM", process.Id.ToString(CultureInfo.InvariantCulture)]);
            await kill.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
        }
        catch (Win32Exception)
        {
        }
        using var timeout = new CancellationTokenSource(StopTimeout);
        try
        {
            await process.WaitForExitAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            process.Kill();
            await process.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
        }
    }

    internal static async Task<string> RunToolAsync(string tool, IEnumerable<string> args, CancellationToken cancellationToken)
    {
        var start = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        Process process;
        try
        {
            process = Process.Start(start)!;
        }
        catch (Win32Exception e)
        {
            throw new ImageioClientException(ImageioErrorKind.Local, $"{tool} is not installed; install qemu-utils (apt-get install qemu-utils)", inner: e);
        }
        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync(CancellationToken.None);
            var stderr = process.StandardError.ReadToEndAsync(CancellationToken.None);
            try
            {
                await process.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                process.Kill();
                throw;
            }
            if (process.ExitCode != 0)
            {
                throw new ImageioClientException(ImageioErrorKind.Local, $"{tool} {string.Join(' ', start.ArgumentList)} failed: {(await stderr.ConfigureAwait(false)).Trim()}");
            }
            return await stdout.ConfigureAwait(false);
        }
    }
}
