using System.Diagnostics;
using System.Globalization;
using System.Text.Json;

namespace ImageioProxy.Hosting;

/// <summary>serve-image: serves one disk image with no other setup. Creates the image if missing, starts
/// its own qemu-nbd on a private unix socket, starts the proxy (plain HTTP on localhost unless
/// Tls:CertFile is given), installs a read-write ticket and prints the upload URL and a curl command.
/// Ctrl-C flushes, then stops the proxy and qemu-nbd. scripts/run.sh wraps it.</summary>
public static class ServeImageCommand
{
    private static readonly string[] ReadWrite = ["read", "write"];
    private const string Usage = "usage: ImageioProxy serve-image IMAGE [--size SIZE] [--format raw|qcow2] [--cache none|writeback] [--Section:Key=value ...]";

    public static async Task<int> RunAsync(string[] args)
    {
        if (args.Length == 0 || args[0].StartsWith('-'))
        {
            await Console.Error.WriteLineAsync(Usage);
            return 2;
        }
        var image = Path.GetFullPath(args[0]);
        string? size = null;
        string? format = null;
        var cache = "none";
        var rest = new List<string>();
        for (var i = 1; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--size" when i + 1 < args.Length:
                    size = args[++i];
                    break;
                case "--format" when i + 1 < args.Length:
                    format = args[++i];
                    break;
                case "--cache" when i + 1 < args.Length:
                    cache = args[++i];
                    break;
                default:
                    rest.Add(args[i]);
                    break;
            }
        }

        try
        {
            return await ServeAsync(image, size, format, cache, [.. rest]);
        }
        catch (Exception e) when (e is InvalidOperationException or IOException or System.ComponentModel.Win32Exception)
        {
            await Console.Error.WriteLineAsync($"serve-image: {e.Message}");
            return 1;
        }
    }

    private static async Task<int> ServeAsync(string image, string? size, string? format, string cache, string[] configArgs)
    {
        if (!File.Exists(image))
        {
            if (size is null)
            {
                throw new InvalidOperationException($"{image} does not exist; give --size to create it");
            }
            format ??= image.EndsWith(".qcow2", StringComparison.OrdinalIgnoreCase) ? "qcow2" : "raw";
            await RunToolAsync("qemu-img", "create", "-q", "-f", format, image, size);
            Console.WriteLine($"Created {format} image {image} of {size}");
        }
        format ??= await DetectFormatAsync(image);

        var runDir = Directory.CreateTempSubdirectory("imageio-proxy-").FullName;
        var nbdSocket = Path.Combine(runDir, "nbd.sock");
        using var qemuNbd = await StartQemuNbdAsync(image, format, cache, nbdSocket);
        try
        {
            var tlsGiven = configArgs.Any(a => a.StartsWith("--Tls:CertFile", StringComparison.OrdinalIgnoreCase));
            var defaults = new Dictionary<string, string?>
            {
                ["Remote:Host"] = "localhost",
                ["Tls:Enable"] = tlsGiven ? "true" : "false",
                ["Local:Socket"] = Path.Combine(runDir, "local.sock"),
                ["Control:Socket"] = Path.Combine(runDir, "control.sock"),
            };
            var ticketId = Guid.NewGuid().ToString();
            var ticketFile = Path.Combine(runDir, "ticket.json");
            var virtualSize = await VirtualSizeAsync(image, format);
            await File.WriteAllTextAsync(ticketFile, JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["uuid"] = ticketId,
                ["size"] = virtualSize,
                ["ops"] = ReadWrite,
                ["timeout"] = 7 * 24 * 3600,
                ["inactivity_timeout"] = 3600,
                ["url"] = $"nbd:unix:{nbdSocket}",
                ["sparse"] = true,
                ["transfer_id"] = "serve-image",
            }));
            defaults["Daemon:TicketFile"] = ticketFile;

            // Defaults first, so that the command line (and the environment) can override them.
            await using var server = ProxyServer.Create(configArgs, config =>
            {
                var overrides = config.Build();
                var effective = defaults.Where(d => overrides[d.Key] is null || d.Key == "Daemon:TicketFile");
                config.AddInMemoryCollection(effective);
            });
            await server.StartAsync();
            var scheme = server.Remote.Enable && tlsGiven ? "https" : "http";
            var host = server.Remote.Host is "::" or "" or "localhost" ? "localhost" : server.Remote.Host;
            var url = $"{scheme}://{host}:{server.RemotePort}/images/{ticketId}";
            Console.WriteLine($"""

                Serving {image} ({format}, {virtualSize} bytes) through qemu-nbd (cache={cache}).
                Upload/download URL: {url}
                Control socket:      {server.ControlSettings.Socket}

                Upload a raw image:
                  curl {(scheme == "https" ? "-k " : "")}--upload-file disk.raw '{url}'
                Download it:
                  curl {(scheme == "https" ? "-k " : "")}-o copy.raw '{url}'
                Press Ctrl-C to flush and stop.
                """);
            await server.WaitForShutdownSignalAsync();
            await server.StopAsync();
            Console.WriteLine("Flushed and stopped.");
        }
        finally
        {
            await StopQemuNbdAsync(qemuNbd);
            Directory.Delete(runDir, recursive: true);
        }
        return 0;
    }

    private static async Task<Process> StartQemuNbdAsync(string image, string format, string cache, string socket)
    {
        var process = TryStart(image, format, cache, socket);
        var (ok, error) = await WaitForSocketAsync(process, socket);
        if (!ok && cache == "none")
        {
            // tmpfs and some other filesystems refuse O_DIRECT: fall back to the page cache.
            Console.Error.WriteLine($"qemu-nbd --cache=none failed ({error.Trim()}); retrying with --cache=writeback");
            process.Dispose();
            process = TryStart(image, format, "writeback", socket);
            (ok, error) = await WaitForSocketAsync(process, socket);
        }
        if (!ok)
        {
            process.Dispose();
            throw new InvalidOperationException($"qemu-nbd did not start: {error.Trim()}");
        }
        return process;
    }

    private static Process TryStart(string image, string format, string cache, string socket)
    {
        var start = new ProcessStartInfo("qemu-nbd")
        {
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[] { "--persistent", "--shared=8", $"--cache={cache}", $"--format={format}", "--allocation-depth", $"--socket={socket}", image })
        {
            start.ArgumentList.Add(arg);
        }
        // Big NBD buffers otherwise come from brk and fragment qemu-nbd's heap.
        start.Environment["GLIBC_TUNABLES"] = "glibc.malloc.mmap_threshold=33554432";
        try
        {
            return Process.Start(start) ?? throw new InvalidOperationException("qemu-nbd did not start");
        }
        catch (System.ComponentModel.Win32Exception)
        {
            throw new InvalidOperationException("qemu-nbd is not installed; install qemu-utils (apt-get install qemu-utils)");
        }
    }

    private static async Task<(bool Ok, string Error)> WaitForSocketAsync(Process process, string socket)
    {
        var stderr = process.StandardError.ReadToEndAsync();
        for (var i = 0; i < 200; i++)
        {
            if (File.Exists(socket))
            {
                return (true, "");
            }
            if (process.HasExited)
            {
                return (false, await stderr);
            }
            await Task.Delay(50);
        }
        return (false, "timed out waiting for its socket");
    }

    private static async Task StopQemuNbdAsync(Process process)
    {
        if (process.HasExited)
        {
            return;
        }
        // SIGTERM lets qemu-nbd close the image cleanly; the proxy already flushed.
        using (var kill = Process.Start("kill", ["-TERM", process.Id.ToString(CultureInfo.InvariantCulture)]))
        {
            await kill.WaitForExitAsync();
        }
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill();
        }
    }

    private static async Task<string> DetectFormatAsync(string image)
    {
        using var info = JsonDocument.Parse(await RunToolAsync("qemu-img", "info", "--output=json", image));
        return info.RootElement.GetProperty("format").GetString() ?? "raw";
    }

    private static async Task<long> VirtualSizeAsync(string image, string format)
    {
        using var info = JsonDocument.Parse(await RunToolAsync("qemu-img", "info", "--output=json", "-f", format, image));
        return info.RootElement.GetProperty("virtual-size").GetInt64();
    }

    private static async Task<string> RunToolAsync(string tool, params string[] args)
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
        catch (System.ComponentModel.Win32Exception)
        {
            throw new InvalidOperationException($"{tool} is not installed; install qemu-utils (apt-get install qemu-utils)");
        }
        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync();
            if (process.ExitCode != 0)
            {
                throw new InvalidOperationException($"{tool} {string.Join(' ', args)} failed: {(await stderr).Trim()}");
            }
            return await stdout;
        }
    }
}
