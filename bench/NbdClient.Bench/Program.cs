using System.Buffers;
using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using NbdClient;

// Copies a raw image (half random data, half a hole) into a fresh sparse raw target served by qemu-nbd,
// with NbdClient and with nbdcopy, alternating, and reports throughputs and the median of per-pair ratios.
// Usage: dotnet run -c Release --project bench/NbdClient.Bench -- [--size-gib 2] [--pairs 5] [--dir /dev/shm/nbdbench] [--markdown FILE] [--zero-copy]

var options = BenchOptions.Parse(args);
Directory.CreateDirectory(options.Directory);
var source = Path.Combine(options.Directory, "source.raw");
await ImageFactory.CreateHalfRandomHalfHoleAsync(source, options.Size);
Console.WriteLine($"source: {source}, {options.Size >> 20} MiB (first half random, second half a hole)");

// One untimed run of each warms the JIT, the page cache and qemu-nbd's code paths.
await RunOnceAsync(options, source, nbdcopy: false);
await RunOnceAsync(options, source, nbdcopy: true);

var ours = new List<double>();
var theirs = new List<double>();
var ratios = new List<double>();
for (var pair = 0; pair < options.Pairs; pair++)
{
    // Alternate who goes first so page-cache warmth and CPU frequency do not favour one side.
    var nbdcopyFirst = pair % 2 == 1;
    double a = 0, b = 0;
    for (var turn = 0; turn < 2; turn++)
    {
        var runNbdcopy = (turn == 0) == nbdcopyFirst;
        var seconds = await RunOnceAsync(options, source, runNbdcopy);
        var gibPerSecond = options.Size / seconds / (1 << 30);
        if (runNbdcopy) b = gibPerSecond; else a = gibPerSecond;
        Console.WriteLine($"pair {pair + 1}: {(runNbdcopy ? "nbdcopy  " : "NbdClient")} {seconds:0.000} s  {gibPerSecond:0.000} GiB/s");
    }
    ours.Add(a);
    theirs.Add(b);
    ratios.Add(a / b);
}

var summary = $"NbdClient median {Median(ours):0.000} GiB/s, nbdcopy median {Median(theirs):0.000} GiB/s, median of per-pair ratios {Median(ratios):0.000}";
Console.WriteLine(summary);
if (options.Markdown is not null)
{
    var lines = new List<string>
    {
        $"| date | image | pairs | NbdClient GiB/s (median) | nbdcopy GiB/s (median) | ratio (median of pairs) | per-pair ratios |",
        "|---|---|---|---|---|---|---|",
        $"| {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC | {options.Size >> 30} GiB, half random, half hole | {options.Pairs} | {Median(ours):0.000} | {Median(theirs):0.000} | **{Median(ratios):0.000}** | {string.Join(" ", ratios.Select(r => r.ToString("0.00", CultureInfo.InvariantCulture)))} |",
    };
    await File.WriteAllLinesAsync(options.Markdown, lines);
}
File.Delete(source);
return 0;

static double Median(List<double> values)
{
    var sorted = values.Order().ToList();
    return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[(sorted.Count / 2) - 1] + sorted[sorted.Count / 2]) / 2;
}

static async Task<double> RunOnceAsync(BenchOptions options, string source, bool nbdcopy)
{
    var target = Path.Combine(options.Directory, "target.raw");
    var socket = Path.Combine(options.Directory, "q.sock");
    File.Delete(target);
    File.Delete(socket);
    await using (var file = File.Create(target))
        file.SetLength(options.Size); // fresh sparse target each run
    using var qemu = QemuNbd.Start(target, socket);
    await QemuNbd.WaitForSocketAsync(socket);
    var stopwatch = Stopwatch.StartNew();
    if (nbdcopy)
        await Tools.RunAsync("nbdcopy", ["--flush", source, $"nbd+unix:///?socket={socket}"]);
    else
        await Copier.CopyAsync(source, new NbdEndpoint(new UnixDomainSocketEndPoint(socket), ""), options);
    var seconds = stopwatch.Elapsed.TotalSeconds;
    qemu.Kill();
    await qemu.WaitForExitAsync();
    await Tools.RunAsync("cmp", [source, target]); // every run must copy correctly
    File.Delete(target);
    return seconds;
}

internal sealed record BenchOptions(long Size, int Pairs, string Directory, string? Markdown, int Chunk, int Connections, long InFlightBytes, bool ZeroCopy)
{
    public static BenchOptions Parse(string[] args)
    {
        long size = 2L << 30;
        int pairs = 5, chunk = 2 << 20, connections = 4;
        long inFlight = 64L << 20;
        string directory = "/dev/shm/nbdbench";
        string? markdown = null;
        var zeroCopy = false;
        for (var i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--size-gib": size = (long)(double.Parse(args[++i], CultureInfo.InvariantCulture) * (1L << 30)); break;
                case "--pairs": pairs = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--dir": directory = args[++i]; break;
                case "--markdown": markdown = args[++i]; break;
                case "--chunk-kib": chunk = int.Parse(args[++i], CultureInfo.InvariantCulture) * 1024; break;
                case "--connections": connections = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--in-flight-mib": inFlight = long.Parse(args[++i], CultureInfo.InvariantCulture) << 20; break;
                case "--zero-copy": zeroCopy = true; break;
                default: throw new ArgumentException($"unknown argument {args[i]}");
            }
        }
        return new BenchOptions(size, pairs, directory, markdown, chunk, connections, inFlight, zeroCopy);
    }
}

/// <summary>What a real uploader does: walk the source's data and holes (SEEK_DATA/SEEK_HOLE, as nbdcopy
/// does for files), read data in chunks into a fixed set of buffers, send all-zero chunks as WRITE_ZEROES
/// and the rest as WRITE, pipelined over the pool, send holes as WRITE_ZEROES, then flush.</summary>
internal static partial class Copier
{
    public static async Task CopyAsync(string source, NbdEndpoint endpoint, BenchOptions options)
    {
        await using var pool = await NbdPool.ConnectAsync(endpoint, new NbdPoolOptions
        {
            MaxConnections = options.Connections,
            Connection = new NbdClientOptions { ZeroCopyWrites = options.ZeroCopy },
        });
        using var file = File.OpenHandle(source, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.Asynchronous);
        var size = RandomAccess.GetLength(file);
        var buffers = new System.Collections.Concurrent.ConcurrentBag<byte[]>();
        var count = (int)Math.Max(1, options.InFlightBytes / options.Chunk);
        for (var i = 0; i < count; i++)
            buffers.Add(GC.AllocateUninitializedArray<byte>(options.Chunk, pinned: true));
        var window = new SemaphoreSlim(count);
        var pending = new List<Task>();
        Exception? failure = null;
        foreach (var (start, length, data) in Segments(file, size))
        {
            if (!data)
            {
                pending.Add(pool.WriteZeroesAsync(start, length).AsTask());
                continue;
            }
            for (var offset = start; offset < start + length && failure is null; offset += options.Chunk)
            {
                await window.WaitAsync();
                var chunk = (int)Math.Min(options.Chunk, start + length - offset);
                buffers.TryTake(out var buffer);
                var read = await RandomAccess.ReadAsync(file, buffer.AsMemory(0, chunk), offset);
                if (read != chunk)
                    throw new IOException($"short read at {offset}");
                var memory = buffer.AsMemory(0, chunk);
                var task = memory.Span.IndexOfAnyExcept((byte)0) < 0
                    ? pool.WriteZeroesAsync(offset, chunk).AsTask()
                    : pool.WriteAsync(offset, memory).AsTask();
                pending.Add(task.ContinueWith(t =>
                {
                    // A failed write's buffer may still be read by the server (zero-copy): never reuse it.
                    if (t.IsCompletedSuccessfully)
                        buffers.Add(buffer!);
                    window.Release();
                    if (t.Exception is not null)
                        failure ??= t.Exception.InnerException;
                }, TaskScheduler.Default));
                if (pending.Count > 1024)
                    pending.RemoveAll(t => t.IsCompleted);
            }
        }
        await Task.WhenAll(pending);
        if (failure is not null)
            throw failure;
        await pool.FlushAsync();
    }

    /// <summary>Data and hole segments of a file, from lseek(SEEK_DATA/SEEK_HOLE).</summary>
    private static IEnumerable<(long Start, long Length, bool Data)> Segments(Microsoft.Win32.SafeHandles.SafeFileHandle file, long size)
    {
        var fd = (int)file.DangerousGetHandle();
        for (long at = 0; at < size;)
        {
            var data = LSeek(fd, at, SeekData);
            if (data < 0 || data >= size)
            {
                yield return (at, size - at, false);
                yield break;
            }
            if (data > at)
                yield return (at, data - at, false);
            var hole = Math.Min(LSeek(fd, data, SeekHole), size);
            yield return (data, hole - data, true);
            at = hole;
        }
    }

    private const int SeekData = 3;
    private const int SeekHole = 4;

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "lseek", SetLastError = true)]
    private static partial long LSeek(int fd, long offset, int whence);
}

internal static class ImageFactory
{
    public static async Task CreateHalfRandomHalfHoleAsync(string path, long size)
    {
        if (File.Exists(path) && new FileInfo(path).Length == size)
            return;
        await using var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20, useAsync: true);
        var random = new Random(2026);
        var buffer = new byte[4 << 20];
        for (long written = 0; written < size / 2; written += buffer.Length)
        {
            random.NextBytes(buffer);
            await file.WriteAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, (size / 2) - written)));
        }
        file.SetLength(size); // the second half stays a hole
    }
}

internal static class QemuNbd
{
    public static Process Start(string image, string socket)
    {
        var info = new ProcessStartInfo("qemu-nbd")
        {
            ArgumentList = { "-f", "raw", "--persistent", "--shared=8", "--cache=none", "--aio=native", "-k", socket, image },
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        // qemu-nbd's speed depends on glibc malloc's mmap threshold (measured: without it, it moves 1.5-2x).
        info.Environment["GLIBC_TUNABLES"] = "glibc.malloc.mmap_threshold=33554432";
        return Process.Start(info) ?? throw new InvalidOperationException("cannot start qemu-nbd");
    }

    public static async Task WaitForSocketAsync(string path)
    {
        for (var i = 0; i < 200; i++)
        {
            if (File.Exists(path))
            {
                try
                {
                    using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                    await probe.ConnectAsync(new UnixDomainSocketEndPoint(path));
                    return;
                }
                catch (SocketException)
                {
                }
            }
            await Task.Delay(25);
        }
        throw new TimeoutException($"qemu-nbd did not create {path}");
    }
}

internal static class Tools
{
    public static async Task RunAsync(string file, string[] arguments)
    {
        var info = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardError = true };
        foreach (var argument in arguments)
            info.ArgumentList.Add(argument);
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"cannot start {file}");
        var stderr = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"{file} {string.Join(' ', arguments)} failed ({process.ExitCode}): {stderr}");
    }
}
