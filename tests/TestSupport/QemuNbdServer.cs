namespace TestSupport;

/// <summary>How to run qemu-nbd. Defaults match the production peer (vdsm): raw, persistent, 8 clients,
/// cache=none (O_DIRECT: the image must not be on tmpfs).</summary>
public sealed record QemuNbdOptions
{
    /// <summary>Image format (-f): raw, qcow2, ...</summary>
    public string Format { get; init; } = "raw";

    /// <summary>Maximum clients (--shared). 1 = no multi-conn: a second client's handshake blocks.</summary>
    public int Shared { get; init; } = 8;

    /// <summary>--cache: none, writeback, writethrough, directsync or unsafe.</summary>
    public string Cache { get; init; } = "none";

    /// <summary>--aio: threads, native or io_uring (null = qemu's default).</summary>
    public string? Aio { get; init; }

    /// <summary>--discard: ignore or unmap (null = qemu's default, ignore).</summary>
    public string? Discard { get; init; }

    /// <summary>--detect-zeroes: off, on or unmap (null = off).</summary>
    public string? DetectZeroes { get; init; }

    public bool ReadOnly { get; init; }

    /// <summary>--persistent. Without it qemu-nbd exits when its first client disconnects.</summary>
    public bool Persistent { get; init; } = true;

    /// <summary>-x NAME; null serves the default export "".</summary>
    public string? ExportName { get; init; }

    /// <summary>-B NAME for each dirty bitmap to expose as qemu:dirty-bitmap:NAME (qcow2 only).</summary>
    public IReadOnlyList<string> Bitmaps { get; init; } = [];

    /// <summary>-A: expose qemu:allocation-depth.</summary>
    public bool AllocationDepth { get; init; }

    /// <summary>Directory with ca-cert.pem, server-cert.pem, server-key.pem (see
    /// <see cref="TlsCertificates.ServerDirectory"/>): serve X.509 TLS only.</summary>
    public string? TlsCertificatesDirectory { get; init; }

    /// <summary>Require a client certificate signed by the CA. Off here; qemu's own default is on, and then a
    /// client without a certificate sees only a TLS read failure.</summary>
    public bool TlsVerifyPeer { get; init; }

    /// <summary>Listen on 127.0.0.1 with a free port instead of a unix socket.</summary>
    public bool Tcp { get; init; }

    /// <summary>Arguments added before the image path.</summary>
    public IReadOnlyList<string> ExtraArgs { get; init; } = [];

    /// <summary>Environment for qemu-nbd; entries override <see cref="QemuNbdServer.DefaultEnvironment"/>,
    /// a null value removes a variable.</summary>
    public IReadOnlyDictionary<string, string?>? Environment { get; init; }

    public TimeSpan StartTimeout { get; init; } = TimeSpan.FromSeconds(20);
}

/// <summary>qemu-nbd serving one image.</summary>
public sealed class QemuNbdServer : NbdServer
{
    private QemuNbdServer(ExternalProcess process, TempDirectory directory, string? socketPath, int? port, string imagePath, QemuNbdOptions options)
        : base(process, directory, socketPath, port, options.ExportName ?? "", options.TlsCertificatesDirectory is not null)
    {
        ImagePath = imagePath;
        Options = options;
    }

    /// <summary>Environment every qemu-nbd gets unless overridden: a fixed malloc mmap threshold, measured to
    /// keep qemu-nbd's throughput stable (glibc's dynamic threshold otherwise wanders with request sizes).</summary>
    public static IReadOnlyDictionary<string, string?> DefaultEnvironment { get; } = new Dictionary<string, string?>
    {
        ["GLIBC_TUNABLES"] = "glibc.malloc.mmap_threshold=33554432",
    };

    public string ImagePath { get; }

    public QemuNbdOptions Options { get; }

    /// <summary>Starts qemu-nbd on <paramref name="imagePath"/> and returns once it listens.</summary>
    public static async Task<QemuNbdServer> StartAsync(string imagePath, QemuNbdOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new QemuNbdOptions();
        var tool = Tool.Require("qemu-nbd");
        var image = Path.GetFullPath(imagePath);
        if (!File.Exists(image))
        {
            throw new FileNotFoundException($"image to serve does not exist: {image}", image);
        }

        var directory = TempDirectory.Create("qnbd");
        try
        {
            var socketPath = options.Tcp ? null : directory.SocketPath();
            var pidFile = directory.Combine("qemu-nbd.pid");
            var environment = new Dictionary<string, string?>(DefaultEnvironment);
            foreach (var (key, value) in options.Environment ?? new Dictionary<string, string?>())
            {
                environment[key] = value;
            }

            var (process, port) = await StartListeningAsync(
                tool,
                port => BuildArguments(image, options, socketPath, port, pidFile),
                options.Tcp,
                pidFile,
                new ExternalProcessOptions { Environment = environment },
                options.StartTimeout,
                cancellationToken).ConfigureAwait(false);
            return new QemuNbdServer(process, directory, socketPath, port, image, options);
        }
        catch
        {
            directory.Dispose();
            throw;
        }
    }

    private static List<string> BuildArguments(string image, QemuNbdOptions options, string? socketPath, int? port, string pidFile)
    {
        var args = new List<string> { $"--format={options.Format}", $"--shared={options.Shared}", $"--cache={options.Cache}" };
        if (options.Persistent)
        {
            args.Add("--persistent");
        }

        AddIfSet(args, "--aio=", options.Aio);
        AddIfSet(args, "--discard=", options.Discard);
        AddIfSet(args, "--detect-zeroes=", options.DetectZeroes);
        if (options.ReadOnly)
        {
            args.Add("--read-only");
        }

        AddIfSet(args, "--export-name=", options.ExportName);
        args.AddRange(options.Bitmaps.Select(b => $"--bitmap={b}"));
        if (options.AllocationDepth)
        {
            args.Add("--allocation-depth");
        }

        if (options.TlsCertificatesDirectory is { } tlsDir)
        {
            var verify = options.TlsVerifyPeer ? "on" : "off";
            args.AddRange(["--object", $"tls-creds-x509,id=tls0,endpoint=server,dir={Path.GetFullPath(tlsDir)},verify-peer={verify}", "--tls-creds=tls0"]);
        }

        args.Add($"--pid-file={pidFile}");
        if (socketPath is not null)
        {
            args.Add($"--socket={socketPath}");
        }
        else
        {
            args.AddRange(["--bind=127.0.0.1", $"--port={port}"]);
        }

        args.AddRange(options.ExtraArgs);
        args.Add(image);
        return args;
    }

    private static void AddIfSet(List<string> args, string prefix, string? value)
    {
        if (value is not null)
        {
            args.Add(prefix + value);
        }
    }
}
