using System.Net;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using ImageioProxy.Configuration;
using ImageioProxy.Control;
using ImageioProxy.Http;
using ImageioProxy.Tickets;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;

namespace ImageioProxy.Hosting;

/// <summary>The whole daemon in one process: a data WebApplication (remote TCP, optionally TLS, and the
/// local unix socket) and a control WebApplication (unix socket, mode 0660). They are separate hosts so
/// that control routes can never be reached from a data listener; they share the ticket store.</summary>
public sealed partial class ProxyServer : IAsyncDisposable
{
    /// <summary>Service key of the TimeProvider used for ticket expiry and inactivity. It is keyed so that
    /// a test clock never reaches Kestrel, which also takes TimeProvider from the container.</summary>
    public const string ClockKey = "ImageioProxy.Clock";

    private readonly WebApplication _data;
    private readonly WebApplication? _control;
    private readonly ILogger<ProxyServer> _logger;
    private bool _stopped;

    private ProxyServer(WebApplication data, WebApplication? control)
    {
        _data = data;
        _control = control;
        _logger = data.Services.GetRequiredService<ILogger<ProxyServer>>();
        Remote = data.Services.GetRequiredService<IConfiguration>().GetSection(RemoteOptions.Section).Get<RemoteOptions>() ?? new();
        Local = data.Services.GetRequiredService<IConfiguration>().GetSection(LocalOptions.Section).Get<LocalOptions>() ?? new();
        ControlSettings = data.Services.GetRequiredService<IConfiguration>().GetSection(ControlOptions.Section).Get<ControlOptions>() ?? new();
    }

    public RemoteOptions Remote { get; }
    public LocalOptions Local { get; }
    public ControlOptions ControlSettings { get; }

    public IServiceProvider Services => _data.Services;

    public TicketStore Tickets => _data.Services.GetRequiredService<TicketStore>();

    public ConnectionTracker Connections => _data.Services.GetRequiredService<ConnectionTracker>();

    /// <summary>The TCP port of the remote service once started (useful with Remote:Port=0).</summary>
    public int? RemotePort { get; private set; }

    /// <summary>Builds both hosts. <paramref name="configure"/> lets tests and the serve-image command add
    /// configuration on top of appsettings.json, the environment and <paramref name="args"/>.</summary>
    public static ProxyServer Create(string[] args, Action<IConfigurationBuilder>? configure = null,
        Action<IServiceCollection>? services = null, TimeProvider? clock = null)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            Args = args,
            ContentRootPath = AppContext.BaseDirectory,
        });
        configure?.Invoke(builder.Configuration);
        ConfigureLogging(builder.Logging);
        builder.WebHost.UseKestrelHttpsConfiguration();

        var config = builder.Configuration;
        builder.Services.Configure<RemoteOptions>(config.GetSection(RemoteOptions.Section));
        builder.Services.Configure<TlsOptions>(config.GetSection(TlsOptions.Section));
        builder.Services.Configure<LocalOptions>(config.GetSection(LocalOptions.Section));
        builder.Services.Configure<ControlOptions>(config.GetSection(ControlOptions.Section));
        builder.Services.Configure<DaemonOptions>(config.GetSection(DaemonOptions.Section));
        builder.Services.Configure<BackendOptions>(config.GetSection(BackendOptions.Section));
        var httpTuning = config.GetSection(HttpOptions.Section).Get<HttpOptions>() ?? new();
        KestrelTuning.AddServices(builder.Services, httpTuning);
        builder.Services.AddKeyedSingleton(ClockKey, clock ?? TimeProvider.System);
        builder.Services.AddSingleton<TicketStore>();
        builder.Services.AddSingleton<ConnectionTracker>();
        builder.Services.AddSingleton<DataApi>();
        builder.Services.AddSingleton<ControlApi>();
        services?.Invoke(builder.Services);

        var remote = config.GetSection(RemoteOptions.Section).Get<RemoteOptions>() ?? new();
        var tls = config.GetSection(TlsOptions.Section).Get<TlsOptions>() ?? new();
        var local = config.GetSection(LocalOptions.Section).Get<LocalOptions>() ?? new();
        var control = config.GetSection(ControlOptions.Section).Get<ControlOptions>() ?? new();
        Validate(config);

        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            // Bodies are bounded by the ticket's range, not by a global size (ecosystem.md §1.6).
            kestrel.Limits.MaxRequestBodySize = null;
            // Inactivity is enforced per ticket by ConnectionTracker (imageio-api.md §2). Not
            // InfiniteTimeSpan: Kestrel maps it to TimeSpan.MaxValue, and "now + MaxValue" overflows in
            // its timeout arithmetic, closing idle keep-alive connections at the next heartbeat.
            kestrel.Limits.KeepAliveTimeout = TimeSpan.FromDays(30);
            KestrelTuning.ApplyLimits(kestrel, httpTuning);
            ConnectionDelegate Track(ConnectionDelegate next) => kestrel.ApplicationServices.GetRequiredService<ConnectionTracker>().Middleware(next);
            if (remote.Enable)
            {
                kestrel.Listen(RemoteEndPoint(remote), listen =>
                {
                    listen.Protocols = HttpProtocols.Http1;
                    listen.Use(Track);
                    if (tls.Enable)
                    {
                        listen.UseHttps(https =>
                        {
                            https.ServerCertificate = LoadCertificate(tls);
                            if (tls.CaFile.Length > 0)
                            {
                                var chain = new X509Certificate2Collection();
                                chain.ImportFromPemFile(tls.CaFile);
                                https.ServerCertificateChain = chain;
                            }
                            https.SslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13;
                            https.ClientCertificateMode = Microsoft.AspNetCore.Server.Kestrel.Https.ClientCertificateMode.NoCertificate;
                        });
                    }
                });
            }
            if (local.Enable)
            {
                kestrel.Listen(UnixEndPoint(local.Socket), listen =>
                {
                    listen.Protocols = HttpProtocols.Http1;
                    listen.Use(Track);
                });
            }
        });

        var data = builder.Build();
        data.Run(data.Services.GetRequiredService<DataApi>().HandleAsync);

        WebApplication? controlApp = null;
        if (control.Enable)
        {
            var controlBuilder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
            controlBuilder.Configuration.AddConfiguration(config);
            ConfigureLogging(controlBuilder.Logging);
            controlBuilder.Services.AddSingleton(data.Services.GetRequiredService<ControlApi>());
            controlBuilder.WebHost.ConfigureKestrel(kestrel =>
            {
                kestrel.AddServerHeader = false;
                kestrel.Limits.MaxRequestBodySize = 1024 * 1024;
                kestrel.Listen(UnixEndPoint(control.Socket), listen => listen.Protocols = HttpProtocols.Http1);
            });
            controlApp = controlBuilder.Build();
            controlApp.Run(controlApp.Services.GetRequiredService<ControlApi>().HandleAsync);
        }
        return new ProxyServer(data, controlApp);
    }

    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        var daemon = _data.Services.GetRequiredService<IConfiguration>().GetSection(DaemonOptions.Section).Get<DaemonOptions>() ?? new();
        if (daemon.TicketFile.Length > 0)
        {
            AddTicketFromFile(daemon.TicketFile);
        }
        PrepareSocket(Local.Enable ? Local.Socket : null);
        await _data.StartAsync(cancellationToken);
        RemotePort = FindRemotePort();
        if (_control is not null)
        {
            PrepareSocket(ControlSettings.Socket);
            await _control.StartAsync(cancellationToken);
            // Only the owner and the group may talk to the control socket (imageio-api.md §1).
            if (!OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(ControlSettings.Socket,
                    UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite);
            }
        }
        LogStarted(Remote.Enable ? $"{Remote.Host}:{RemotePort}" : "disabled", Local.Enable ? Printable(Local.Socket) : "disabled",
            _control is not null ? ControlSettings.Socket : "disabled");
    }

    /// <summary>Stops accepting, lets running requests finish, then flushes and closes every pool.</summary>
    public async Task StopAsync(CancellationToken cancellationToken = default)
    {
        if (_stopped)
        {
            return;
        }
        _stopped = true;
        if (_control is not null)
        {
            await _control.StopAsync(cancellationToken);
        }
        await _data.StopAsync(cancellationToken);
        await Tickets.DisposeAsync();
        await Connections.DisposeAsync();
        LogStopped();
    }

    /// <summary>Completes when the host is asked to stop (SIGINT, SIGTERM).</summary>
    public Task WaitForShutdownSignalAsync()
    {
        var lifetime = _data.Services.GetRequiredService<IHostApplicationLifetime>();
        var stopping = new TaskCompletionSource();
        lifetime.ApplicationStopping.Register(() => stopping.TrySetResult());
        return stopping.Task;
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        if (_control is not null)
        {
            await _control.DisposeAsync();
        }
        await _data.DisposeAsync();
    }

    public void AddTicketFromFile(string path)
    {
        using var document = JsonDocument.Parse(File.ReadAllBytes(path));
        if (!TicketSpec.TryParse(document.RootElement, Tickets.DefaultInactivityTimeout, out var spec, out var error))
        {
            throw new InvalidOperationException($"Invalid ticket in {path} (Daemon:TicketFile): {error}");
        }
        Tickets.Add(spec);
    }

    private int? FindRemotePort()
    {
        var addresses = _data.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses ?? [];
        foreach (var address in addresses)
        {
            if (!address.Contains("unix:", StringComparison.Ordinal) && Uri.TryCreate(address.Replace("[::]", "localhost", StringComparison.Ordinal), UriKind.Absolute, out var uri))
            {
                return uri.Port;
            }
        }
        return null;
    }

    private static void ConfigureLogging(ILoggingBuilder logging)
    {
        // Request lines carry the ticket id, a secret (imageio issue #26): never log them.
        logging.AddFilter("Microsoft.AspNetCore.Hosting.Diagnostics", LogLevel.Warning);
        logging.AddFilter("Microsoft.AspNetCore.Server.Kestrel.BadRequests", LogLevel.None);
        logging.AddFilter("Microsoft.AspNetCore.Server.Kestrel.Http2", LogLevel.None);
        logging.AddFilter("Microsoft.AspNetCore.Server.Kestrel", LogLevel.Warning);
    }

    private static void Validate(ConfigurationManager config)
    {
        var errors = new List<string>();
        var tls = config.GetSection(TlsOptions.Section).Get<TlsOptions>() ?? new();
        var remote = config.GetSection(RemoteOptions.Section).Get<RemoteOptions>() ?? new();
        var backend = config.GetSection(BackendOptions.Section).Get<BackendOptions>() ?? new();
        var daemon = config.GetSection(DaemonOptions.Section).Get<DaemonOptions>() ?? new();
        if (remote.Enable && tls.Enable && (tls.CertFile.Length == 0 || tls.KeyFile.Length == 0))
        {
            errors.Add("TLS is enabled but Tls:CertFile or Tls:KeyFile is not set; set both, or set Tls:Enable=false for plain HTTP");
        }
        if (remote.Port is < 0 or > 65535)
        {
            errors.Add($"Remote:Port={remote.Port} is not a port number (0 picks a free one)");
        }
        if (backend.ChunkSize is < 4096 or > 32 * 1024 * 1024)
        {
            errors.Add($"Backend:ChunkSize={backend.ChunkSize} must lie between 4096 and 33554432 (qemu-nbd's maximum request)");
        }
        if (backend.ZeroStep is < 4096 or > uint.MaxValue - 4095)
        {
            errors.Add($"Backend:ZeroStep={backend.ZeroStep} must lie between 4096 and 4 GiB - 4096");
        }
        if (backend.MaxInFlightBytesPerTicket < backend.ChunkSize || backend.MaxInFlightBytes < backend.ChunkSize)
        {
            errors.Add("Backend:MaxInFlightBytesPerTicket and Backend:MaxInFlightBytes must be at least Backend:ChunkSize");
        }
        if (backend.ReadAhead < 1 || backend.NbdConnections < 1)
        {
            errors.Add("Backend:ReadAhead and Backend:NbdConnections must be at least 1");
        }
        var http = config.GetSection(HttpOptions.Section).Get<HttpOptions>() ?? new();
        if (http.PoolBlockSize != 0 && http.PoolBlockSize is < 4096 or > 1024 * 1024)
        {
            errors.Add($"Http:PoolBlockSize={http.PoolBlockSize} must be 0 (Kestrel's own pool) or lie between 4096 and 1048576");
        }
        if (http.MaxRequestBufferSize < 64 * 1024)
        {
            errors.Add($"Http:MaxRequestBufferSize={http.MaxRequestBufferSize} must be at least 65536");
        }
        if (daemon.MaxConnections < 1 || daemon.InactivityTimeout < 0)
        {
            errors.Add("Daemon:MaxConnections must be at least 1 and Daemon:InactivityTimeout at least 0");
        }
        if (errors.Count > 0)
        {
            throw new InvalidOperationException("Invalid configuration:\n  " + string.Join("\n  ", errors));
        }
    }

    private static X509Certificate2 LoadCertificate(TlsOptions tls)
    {
        using var pem = X509Certificate2.CreateFromPemFile(tls.CertFile, tls.KeyFile);
        // Exportable copy: SslStream on Linux needs the key, which PEM-loaded ephemeral keys provide.
        return X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pkcs12), null);
    }

    private static IPEndPoint RemoteEndPoint(RemoteOptions remote) => remote.Host switch
    {
        "::" => new IPEndPoint(IPAddress.IPv6Any, remote.Port),
        "" or "0.0.0.0" => new IPEndPoint(IPAddress.Any, remote.Port),
        "localhost" => new IPEndPoint(IPAddress.Loopback, remote.Port),
        _ when IPAddress.TryParse(remote.Host, out var address) => new IPEndPoint(address, remote.Port),
        _ => new IPEndPoint(Dns.GetHostAddresses(remote.Host)[0], remote.Port),
    };

    private static UnixDomainSocketEndPoint UnixEndPoint(string path) => new(path);

    /// <summary>Removes a stale socket file left by a previous run and creates its directory.</summary>
    private static void PrepareSocket(string? path)
    {
        if (string.IsNullOrEmpty(path) || path[0] == '\0')
        {
            return; // abstract sockets have no file
        }
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        if (File.Exists(path) && (File.GetAttributes(path) & FileAttributes.Directory) == 0)
        {
            File.Delete(path);
        }
    }

    private static string Printable(string socket) => socket.Replace("\0", "@", StringComparison.Ordinal);

    [LoggerMessage(EventId = 5001, Level = LogLevel.Information, Message = "Serving remote={Remote} local={Local} control={Control}")]
    private partial void LogStarted(string remote, string local, string control);

    [LoggerMessage(EventId = 5002, Level = LogLevel.Information, Message = "Stopped; every pool was flushed and closed")]
    private partial void LogStopped();
}
