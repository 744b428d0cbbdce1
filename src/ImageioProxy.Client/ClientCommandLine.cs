using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using System.Text.Json;
using ImageioProxy.Checksums;

namespace ImageioProxy.Client;

/// <summary>The command line: <c>upload SRC URL</c>, <c>download URL DST</c>, <c>checksum SRC|URL</c>,
/// <c>info URL</c>. Exit status 0 on success, 1 when the transfer failed, 2 for a usage error, 130 when
/// interrupted (Ctrl-C, SIGTERM).</summary>
public static class ClientCommandLine
{
    public const int ExitFailure = 1;
    public const int ExitUsage = 2;
    public const int ExitInterrupted = 130;

    /// <summary>The command names, for a host program that dispatches them (ImageioProxy's Program.cs).</summary>
    public static IReadOnlyList<string> Commands { get; } = ["upload", "download", "checksum", "info"];

    /// <summary>Runs on the console; Ctrl-C and SIGTERM stop the transfer cleanly.</summary>
    public static Task<int> RunAsync(string[] args) =>
        InvokeAsync(args, Console.Out, Console.Error, isTerminal: !Console.IsOutputRedirected, handleSignals: true, CancellationToken.None);

    /// <summary>Runs with the given output streams. <paramref name="handleSignals"/>: cancel on SIGINT/SIGTERM
    /// (false for a caller that cancels through <paramref name="cancellationToken"/>, such as a test).</summary>
    public static async Task<int> InvokeAsync(string[] args, TextWriter stdout, TextWriter stderr, bool isTerminal, bool handleSignals,
        CancellationToken cancellationToken)
    {
        var root = Build(stdout, stderr, isTerminal);
        var parsed = root.Parse(args);
        var configuration = new InvocationConfiguration
        {
            Output = stdout,
            Error = stderr,
            // Long enough for the cleanup after a cancel (stopping qemu-nbd, removing a partial file).
            ProcessTerminationTimeout = handleSignals ? TimeSpan.FromSeconds(20) : null,
        };
        if (parsed.Errors.Count > 0)
        {
            foreach (var error in parsed.Errors)
            {
                await stderr.WriteLineAsync($"imageio-client: {error.Message}");
            }
            await stderr.WriteLineAsync("Try 'imageio-client --help'.");
            return ExitUsage;
        }
        return await parsed.InvokeAsync(configuration, cancellationToken);
    }

    private static RootCommand Build(TextWriter stdout, TextWriter stderr, bool isTerminal)
    {
        var caFile = new Option<string?>("--cafile") { Description = "PEM file of the CA that signed the server's certificate (default: the system's trust store)", Recursive = true };
        var insecure = new Option<bool>("--insecure") { Description = "Do not verify the server's TLS certificate (testing only)", Recursive = true };
        var maxWorkers = new Option<int>("--max-workers")
        {
            Description = "Parallel connections (capped by the server's max_writers/max_readers)",
            DefaultValueFactory = _ => ImageioClientOptions.DefaultMaxWorkers,
            Recursive = true,
        };
        var chunkSize = new Option<int>("--chunk-size")
        {
            Description = "Bytes per request: a number with an optional K, M or G suffix (binary units), up to 128M",
            DefaultValueFactory = _ => ImageioClientOptions.DefaultChunkSize,
            CustomParser = ParseChunkSize,
            Recursive = true,
        };
        var output = new Option<string>("--output")
        {
            Description = "text: a progress bar on a terminal; json: one JSON progress object per line; none: quiet",
            DefaultValueFactory = _ => "text",
            Recursive = true,
        };
        output.AcceptOnlyFromAmong("text", "json", "none");
        var noUnixSocket = new Option<bool>("--no-unix-socket") { Description = "Stay on TCP even when the server offers a local unix socket", Recursive = true };

        var root = new RootCommand("Sparse-aware upload, download and checksum of disk images through an ovirt-imageio compatible server.");
        foreach (var option in new Option[] { caFile, insecure, maxWorkers, chunkSize, output, noUnixSocket })
        {
            root.Options.Add(option);
        }

        ImageioClientOptions ClientOptions(ParseResult result) => new()
        {
            CaFile = result.GetValue(caFile),
            Insecure = result.GetValue(insecure),
            MaxWorkers = result.GetValue(maxWorkers),
            ChunkSize = result.GetValue(chunkSize),
            UseUnixSocket = !result.GetValue(noUnixSocket),
            Warning = message => stderr.WriteLine($"imageio-client: warning: {message}"),
        };
        ProgressOutput Output(ParseResult result) => result.GetValue(output) switch
        {
            "json" => ProgressOutput.Json,
            "none" => ProgressOutput.None,
            _ => ProgressOutput.Text,
        };

        // upload SRC URL
        var uploadSource = new Argument<string>("SRC") { Description = "Local image (raw, qcow2, or any format qemu-img reads)" };
        var uploadUrl = new Argument<Uri>("URL") { Description = "Ticket URL: https://host:54322/images/TICKET", CustomParser = ParseUrl };
        var sourceFormat = new Option<string?>("--format", "-f") { Description = "Format of SRC (default: probed with qemu-img info)" };
        var targetIsZero = new Option<bool>("--target-is-zero") { Description = "The target is new and reads as zeroes: skip zero extents instead of zeroing them" };
        var upload = new Command("upload", "Upload a local image to a ticket URL") { uploadSource, uploadUrl, sourceFormat, targetIsZero };
        upload.SetAction((result, ct) => TransferAsync(stdout, stderr, isTerminal, Output(result), "upload", (progress, c) =>
            ImageTransfers.UploadAsync(result.GetValue(uploadSource)!, result.GetValue(uploadUrl)!, ClientOptions(result), progress,
                result.GetValue(sourceFormat), result.GetValue(targetIsZero), c), ct));

        // download URL DST
        var downloadUrl = new Argument<Uri>("URL") { Description = "Ticket URL", CustomParser = ParseUrl };
        var destination = new Argument<string>("DST") { Description = "Local image to create (replaced if it exists, only once the download succeeded)" };
        var targetFormat = new Option<string?>("--format", "-f") { Description = "raw or qcow2 (default: qcow2 if DST ends with .qcow2, else raw)" };
        targetFormat.AcceptOnlyFromAmong("raw", "qcow2");
        var download = new Command("download", "Download the image of a ticket URL to a local raw or qcow2 file") { downloadUrl, destination, targetFormat };
        download.SetAction((result, ct) =>
        {
            var dst = result.GetValue(destination)!;
            var format = (result.GetValue(targetFormat) ?? (dst.EndsWith(".qcow2", StringComparison.OrdinalIgnoreCase) ? "qcow2" : "raw")) == "qcow2"
                ? DownloadFormat.Qcow2 : DownloadFormat.Raw;
            return TransferAsync(stdout, stderr, isTerminal, Output(result), "download", (progress, c) =>
                ImageTransfers.DownloadAsync(result.GetValue(downloadUrl)!, dst, format, ClientOptions(result), progress, c), ct);
        });

        // checksum SRC|URL
        var checksumTarget = new Argument<string>("SRC|URL") { Description = "A local image, or a ticket URL (the server computes it)" };
        var checksumFormat = new Option<string?>("--format", "-f") { Description = "Format of a local SRC (default: probed)" };
        var algorithm = new Option<string>("--algorithm") { Description = "Hash algorithm", DefaultValueFactory = _ => BlockHash.DefaultAlgorithm };
        algorithm.AcceptOnlyFromAmong([.. BlockHash.Algorithms]);
        var blockSize = new Option<int>("--block-size") { Description = "Checksum block size (must match to compare digests)", DefaultValueFactory = _ => BlockHash.DefaultBlockSize, CustomParser = ParseChunkSize };
        var checksum = new Command("checksum", "imageio's block checksum of a local image or of a ticket's image") { checksumTarget, checksumFormat, algorithm, blockSize };
        checksum.SetAction((result, ct) => RunAsync(stderr, "checksum", async c =>
        {
            var target = result.GetValue(checksumTarget)!;
            var value = IsUrl(target)
                ? await ImageTransfers.ChecksumRemoteAsync(new Uri(target), ClientOptions(result), result.GetValue(algorithm)!, result.GetValue(blockSize), c)
                : await ImageTransfers.ChecksumLocalAsync(target, result.GetValue(checksumFormat), result.GetValue(algorithm)!, result.GetValue(blockSize), c);
            await stdout.WriteLineAsync(JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["algorithm"] = value.Algorithm,
                ["block_size"] = value.BlockSize,
                ["checksum"] = value.Checksum,
            }));
        }, ct));

        // info URL
        var infoUrl = new Argument<Uri>("URL") { Description = "Ticket URL", CustomParser = ParseUrl };
        var info = new Command("info", "What the server says about a ticket (OPTIONS) and a summary of the image's extents") { infoUrl };
        info.SetAction((result, ct) => RunAsync(stderr, "info", async c =>
        {
            var report = await ImageTransfers.InfoAsync(result.GetValue(infoUrl)!, ClientOptions(result), c);
            await stdout.WriteLineAsync(Output(result) == ProgressOutput.Json ? InfoJson(report) : InfoText(report));
        }, ct));

        root.Subcommands.Add(upload);
        root.Subcommands.Add(download);
        root.Subcommands.Add(checksum);
        root.Subcommands.Add(info);
        return root;
    }

    private static async Task<int> TransferAsync(TextWriter stdout, TextWriter stderr, bool isTerminal, ProgressOutput output, string command,
        Func<TransferProgress, CancellationToken, Task> transfer, CancellationToken cancellationToken)
    {
        var progress = new TransferProgress();
        await using var display = ProgressDisplay.Start(progress, output, stdout, isTerminal);
        var succeeded = false;
        try
        {
            return await RunAsync(stderr, command, async ct =>
            {
                await transfer(progress, ct);
                succeeded = true;
            }, cancellationToken, () => display.CompleteAsync(succeeded));
        }
        finally
        {
            await display.CompleteAsync(succeeded);
        }
    }

    private static async Task<int> RunAsync(TextWriter stderr, string command, Func<CancellationToken, Task> action, CancellationToken cancellationToken,
        Func<Task>? beforeMessage = null)
    {
        string message;
        int status;
        try
        {
            await action(cancellationToken);
            return 0;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            (message, status) = ($"{command} interrupted; nothing was left claiming success", ExitInterrupted);
        }
        catch (ImageioClientException e)
        {
            (message, status) = (e.Message, ExitFailure);
        }
        catch (ArgumentException e)
        {
            (message, status) = (e.Message, ExitUsage);
        }
        if (beforeMessage is not null)
        {
            await beforeMessage();
        }
        await stderr.WriteLineAsync($"imageio-client: {command} failed: {message}");
        return status;
    }

    private static string InfoText(ImageInfoReport report)
    {
        var server = report.Server;
        return string.Create(CultureInfo.InvariantCulture, $"""
            url:          {report.Url}
            features:     {string.Join(", ", server.Features)}
            allow:        {(server.AllowedMethods.Count > 0 ? string.Join(",", server.AllowedMethods) : "(not sent)")}
            max readers:  {server.MaxReaders}
            max writers:  {server.MaxWriters}
            unix socket:  {(server.UnixSocket is null ? "(none)" : server.UnixSocket.Replace("\0", "\\0", StringComparison.Ordinal))}{(report.UsesUnixSocket ? " (in use)" : "")}
            size:         {report.Size} ({ProgressDisplay.FormatBytes(report.Size)})
            extents:      {report.Extents}
            data:         {report.DataBytes} ({ProgressDisplay.FormatBytes(report.DataBytes)})
            zero:         {report.ZeroBytes} ({ProgressDisplay.FormatBytes(report.ZeroBytes)})
            hole:         {report.HoleBytes} ({ProgressDisplay.FormatBytes(report.HoleBytes)})
            """);
    }

    private static string InfoJson(ImageInfoReport report) => JsonSerializer.Serialize(new Dictionary<string, object?>
    {
        ["url"] = report.Url.ToString(),
        ["features"] = report.Server.Features,
        ["allow"] = report.Server.AllowedMethods,
        ["max_readers"] = report.Server.MaxReaders,
        ["max_writers"] = report.Server.MaxWriters,
        ["unix_socket"] = report.Server.UnixSocket,
        ["uses_unix_socket"] = report.UsesUnixSocket,
        ["size"] = report.Size,
        ["extents"] = report.Extents,
        ["data"] = report.DataBytes,
        ["zero"] = report.ZeroBytes,
        ["hole"] = report.HoleBytes,
    });

    private static bool IsUrl(string value) =>
        value.StartsWith("http://", StringComparison.OrdinalIgnoreCase) || value.StartsWith("https://", StringComparison.OrdinalIgnoreCase);

    private static Uri? ParseUrl(ArgumentResult result)
    {
        var text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
        if (Uri.TryCreate(text, UriKind.Absolute, out var uri) && uri.Scheme is "http" or "https")
        {
            return uri;
        }
        result.AddError($"'{text}' is not an http:// or https:// ticket URL");
        return null;
    }

    /// <summary>"8388608", "8M", "8MiB", "512k", "1G" (binary units).</summary>
    internal static int ParseChunkSize(ArgumentResult result)
    {
        var text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
        if (TryParseSize(text, out var size) && size is > 0 and <= int.MaxValue)
        {
            return (int)size;
        }
        result.AddError($"'{text}' is not a size (for example 8388608, 8M, 512K)");
        return 0;
    }

    internal static bool TryParseSize(string text, out long size)
    {
        size = 0;
        var trimmed = text.Trim();
        var multiplier = 1L;
        foreach (var (suffix, value) in new (string, long)[] { ("KiB", 1L << 10), ("MiB", 1L << 20), ("GiB", 1L << 30), ("K", 1L << 10), ("M", 1L << 20), ("G", 1L << 30) })
        {
            if (trimmed.EndsWith(suffix, StringComparison.OrdinalIgnoreCase))
            {
                multiplier = value;
                trimmed = trimmed[..^suffix.Length];
                break;
            }
        }
        if (!long.TryParse(trimmed, NumberStyles.None, CultureInfo.InvariantCulture, out var number) || number > long.MaxValue / multiplier)
        {
            return false;
        }
        size = number * multiplier;
        return true;
    }
}
