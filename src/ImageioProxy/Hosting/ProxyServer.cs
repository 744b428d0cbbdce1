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
    private bool _missedDeadline;

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

    /// <summary>The TCP port of the monitoring listener once started; null when Monitoring:Port is unset.</summary>
    public int? MonitoringPort => _data.Services.GetRequiredService<MonitoringServer>().Port;

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
        OperationsSetup.AddConfigFile(builder.Configuration);
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
        var shutdownTimeout = ShutdownTimeoutOf(config);
        builder.Services.Configure<HostOptions>(host => host.ShutdownTimeout = shutdownTimeout);
        builder.Services.Configure<LimitsOptions>(config.GetSection(LimitsOptions.Section));
        builder.Services.Configure<HttpOptions>(config.GetSection(HttpOptions.Section));
        builder.Services.AddKeyedSingleton(ClockKey, clock ?? TimeProvider.System);
        builder.Services.AddSingleton<TicketStore>();
        builder.Services.AddSingleton<ConnectionTracker>();
        builder.Services.AddSingleton<DataApi>();
        builder.Services.AddSingleton<ControlApi>();
        var operationsErrors = OperationsSetup.AddOperations(builder);
        services?.Invoke(builder.Services);

        var remote = config.GetSection(RemoteOptions.Section).Get<RemoteOptions>() ?? new();
        var tls = config.GetSection(TlsOptions.Section).Get<TlsOptions>() ?? new();
        var local = config.GetSection(LocalOptions.Section).Get<LocalOptions>() ?? new();
        var control = config.GetSection(ControlOptions.Section).Get<ControlOptions>() ?? new();
        var limits = config.GetSection(LimitsOptions.Section).Get<LimitsOptions>() ?? new();
        Validate(config, operationsErrors);

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
            ApplyLimits(kestrel.Limits, limits);
            ConnectionDelegate Track(ConnectionDelegate next) => kestrel.ApplicationServices.GetRequiredService<ConnectionTracker>().Middleware(next);
            if (remote.Enable)
            {
                kestrel.Listen(RemoteEndPoint(remote), listen =>
                {
                    listen.Protocols = HttpProtocols.Http1;
                    listen.Use(Track);
                    if (httpTuning.SpliceUploads && !tls.Enable)
                    {
                        listen.Use(BodySplicing.Middleware);
                    }
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
                    if (httpTuning.SpliceLocalUploads)
                    {
                        listen.Use(BodySplicing.Middleware);
                    }
                });
            }
        });

        var data = builder.Build();
        OperationsSetup.UseOperations(data);
        data.Run(data.Services.GetRequiredService<DataApi>().HandleAsync);

        WebApplication? controlApp = null;
        if (control.Enable)
        {
            var controlBuilder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
            controlBuilder.Configuration.AddConfiguration(config);
            ConfigureLogging(controlBuilder.Logging);
            controlBuilder.Services.AddSingleton(data.Services.GetRequiredService<ControlApi>());
            controlBuilder.Services.Configure<HostOptions>(host => host.ShutdownTimeout = shutdownTimeout);
            // The same extra services (log providers, time) in both hosts: a log capture must also see
            // what the control host logs about tickets.
            services?.Invoke(controlBuilder.Services);
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
        // Every listener is up: readiness and systemd's READY=1 (Type=notify).
        _data.Services.GetRequiredService<Observability.ServiceReadiness>().MarkStarted();
    }

    /// <summary>Daemon:ShutdownTimeout: the whole of <see cref="StopAsync"/>.</summary>
    public TimeSpan ShutdownTimeout => ShutdownTimeoutOf(_data.Services.GetRequiredService<IConfiguration>());

    /// <summary>Graceful shutdown, bounded by Daemon:ShutdownTimeout (ecosystem.md §2.5): stop accepting
    /// (the listeners close, so new connections are refused), let running requests finish during all but
    /// a flush reserve, abort those still running, then cancel every ticket and flush and close its pool
    /// in what is left. Returns by the deadline even if a hung backend keeps a flush from finishing: the
    /// process must exit before Kubernetes' SIGKILL, and an unflushed ticket is logged.</summary>
    public async Task StopAsync(CancellationToken cancellationToken = default)
    {
        if (_stopped)
        {
            return;
        }
        _stopped = true;
        // Wall-clock, not the ticket clock: the deadline is Kubernetes' SIGKILL.
        var time = TimeProvider.System;
        var total = ShutdownTimeout;
        var flushReserve = TimeSpan.FromTicks(Math.Min(TimeSpan.FromSeconds(5).Ticks, total.Ticks / 4));
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(total);
        using var drain = CancellationTokenSource.CreateLinkedTokenSource(deadline.Token);
        drain.CancelAfter(total - flushReserve);
        var started = time.GetTimestamp();
        LogStopping(total.TotalSeconds, Tickets.Count);

        // 1. Refuse new requests and drain running ones; Kestrel aborts what still runs when drain fires.
        if (_control is not null)
        {
            await _control.StopAsync(drain.Token);
        }
        await _data.StopAsync(drain.Token);

        // 2. Flush and close every pool. Aborted requests end their in-flight NBD writes first.
        var closing = Tickets.DisposeAsync().AsTask();
        try
        {
            await closing.WaitAsync(deadline.Token);
            await Connections.DisposeAsync();
            LogStopped(time.GetElapsedTime(started).TotalSeconds);
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested)
        {
            _missedDeadline = true;
            LogStopDeadline(total.TotalSeconds);
        }
    }

    private static TimeSpan ShutdownTimeoutOf(IConfiguration config)
    {
        var daemon = config.GetSection(DaemonOptions.Section).Get<DaemonOptions>() ?? new();
        return TimeSpan.FromSeconds(daemon.ShutdownTimeout);
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
        var disposing = DisposeHostsAsync();
        if (_missedDeadline)
        {
            // Disposing the services would wait again for the flush that missed the deadline.
            await disposing.WaitAsync(TimeSpan.FromSeconds(1)).ContinueWith(static _ => { }, TaskScheduler.Default);
            return;
        }
        await disposing;
    }

    private async Task DisposeHostsAsync()
    {
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
        // Request lines carry the ticket id, a secret (imageio issue #26): never log them. Hosting's
        // category must be off entirely: while it is enabled at any level, ASP.NET Core wraps every log
        // of a request in a scope with RequestPath, which scope-aware providers write out.
        logging.AddFilter("Microsoft.AspNetCore.Hosting.Diagnostics", LogLevel.None);
        logging.AddFilter("Microsoft.AspNetCore.Server.Kestrel.BadRequests", LogLevel.None);
        logging.AddFilter("Microsoft.AspNetCore.Server.Kestrel.Http2", LogLevel.None);
        logging.AddFilter("Microsoft.AspNetCore.Server.Kestrel", LogLevel.Warning);
    }

    private static void Validate(ConfigurationManager config, IEnumerable<string> operationsErrors)
    {
        var errors = new List<string>(operationsErrors);
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
        if (backend.NbdRequestSize != 0 && backend.NbdRequestSize is < 4096 or > 32 * 1024 * 1024)
        {
            errors.Add($"Backend:NbdRequestSize={backend.NbdRequestSize} must be 0 (one request per chunk) or lie between 4096 and 33554432");
        }
        if (backend.SpliceRequestSize != 0 && (backend.SpliceRequestSize is < 4096 or > 32 * 1024 * 1024 || backend.SpliceRequestSize % 4096 != 0))
        {
            errors.Add($"Backend:SpliceRequestSize={backend.SpliceRequestSize} must be 0 (as Backend:NbdRequestSize) or a multiple of 4096 between 4096 and 33554432");
        }
        if (backend.ZeroStep is < 4096 or > uint.MaxValue - 4095)
        {
            errors.Add($"Backend:ZeroStep={backend.ZeroStep} must lie between 4096 and 4 GiB - 4096");
        }
        if (backend.SocketBufferSize is < 0 or > 256 * 1024 * 1024)
        {
            errors.Add($"Backend:SocketBufferSize={backend.SocketBufferSize} must be 0 (the system's) or a byte count up to 268435456");
        }
        if (backend.MaxInFlightBytesPerTicket < backend.ChunkSize || backend.MaxInFlightBytes < backend.ChunkSize)
        {
            errors.Add("Backend:MaxInFlightBytesPerTicket and Backend:MaxInFlightBytes must be at least Backend:ChunkSize");
        }
        if (backend.ReadAhead < 1 || backend.NbdConnections < 0)
        {
            errors.Add("Backend:ReadAhead must be at least 1 and Backend:NbdConnections at least 0 (0: one per core, at most 4)");
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
        if (daemon.ShutdownTimeout is < 1 or > 3600)
        {
            errors.Add($"Daemon:ShutdownTimeout={daemon.ShutdownTimeout} must lie between 1 and 3600 seconds");
        }
        if (backend.RequestTimeout is < 0.1 or > 86400 || backend.ConnectTimeout is < 0.1 or > 3600)
        {
            errors.Add("Backend:RequestTimeout must lie between 0.1 and 86400 seconds, Backend:ConnectTimeout between 0.1 and 3600");
        }
        if (backend.ReconnectAttempts < 1 || backend.ReconnectDelay < 0 || backend.ReconnectMaxDelay < backend.ReconnectDelay)
        {
            errors.Add("Backend:ReconnectAttempts must be at least 1, Backend:ReconnectDelay at least 0 and Backend:ReconnectMaxDelay at least Backend:ReconnectDelay");
        }
        if (backend.BreakerFailureThreshold is 1 or < 0 || (backend.BreakerFailureThreshold > 0 && (backend.BreakerBreakDuration < 0.5 || backend.BreakerSamplingDuration < 0.5)))
        {
            errors.Add("Backend:BreakerFailureThreshold must be 0 (off) or at least 2, and Backend:BreakerBreakDuration and Backend:BreakerSamplingDuration at least 0.5 seconds (Polly's minimums)");
        }
        if (remote.Enable && tls.Enable)
        {
            foreach (var (key, path) in new[] { ("Tls:CertFile", tls.CertFile), ("Tls:KeyFile", tls.KeyFile), ("Tls:CaFile", tls.CaFile) })
            {
                if (path.Length > 0 && !File.Exists(path))
                {
                    errors.Add($"{key}={path} does not exist");
                }
            }
        }
        ValidateLimits(config.GetSection(LimitsOptions.Section).Get<LimitsOptions>() ?? new(), errors);
        if (errors.Count > 0)
        {
            throw new InvalidOperationException("Invalid configuration:\n  " + string.Join("\n  ", errors));
        }
    }

    private static void ValidateLimits(LimitsOptions limits, List<string> errors)
    {
        if (limits.MinRequestBodyDataRate < 0 || limits.MinResponseDataRate < 0)
        {
            errors.Add("Limits:MinRequestBodyDataRate and Limits:MinResponseDataRate must be at least 0 (0 disables the check)");
        }
        // Kestrel checks rates on its 1 s heartbeat and refuses shorter grace periods.
        if (limits.MinRequestBodyDataRateGracePeriod < 2 || limits.MinResponseDataRateGracePeriod < 2)
        {
            errors.Add("Limits:MinRequestBodyDataRateGracePeriod and Limits:MinResponseDataRateGracePeriod must be at least 2 seconds");
        }
        if (limits.RequestHeadersTimeout < 1)
        {
            errors.Add("Limits:RequestHeadersTimeout must be at least 1 second");
        }
        if (limits.MaxRequestLineSize < 256 || limits.MaxRequestHeadersTotalSize < 1024 || limits.MaxRequestHeaderCount < 8)
        {
            errors.Add("Limits:MaxRequestLineSize must be at least 256, Limits:MaxRequestHeadersTotalSize at least 1024 and Limits:MaxRequestHeaderCount at least 8");
        }
        if (limits.MaxConcurrentConnections < 0)
        {
            errors.Add("Limits:MaxConcurrentConnections must be at least 0 (0 = unlimited)");
        }
    }

    /// <summary>Slowloris and size limits of the data listeners (ecosystem.md §1.6). The rates are
    /// cumulative averages, checked only while the proxy waits for the client, so back-pressure from a
    /// slow backend and short stalls of a fast upload do not trip them.</summary>
    private static void ApplyLimits(KestrelServerLimits kestrel, LimitsOptions limits)
    {
        kestrel.MinRequestBodyDataRate = limits.MinRequestBodyDataRate == 0
            ? null
            : new MinDataRate(limits.MinRequestBodyDataRate, TimeSpan.FromSeconds(limits.MinRequestBodyDataRateGracePeriod));
        kestrel.MinResponseDataRate = limits.MinResponseDataRate == 0
            ? null
            : new MinDataRate(limits.MinResponseDataRate, TimeSpan.FromSeconds(limits.MinResponseDataRateGracePeriod));
        kestrel.RequestHeadersTimeout = TimeSpan.FromSeconds(limits.RequestHeadersTimeout);
        kestrel.MaxRequestLineSize = limits.MaxRequestLineSize;
        kestrel.MaxRequestHeadersTotalSize = limits.MaxRequestHeadersTotalSize;
        kestrel.MaxRequestHeaderCount = limits.MaxRequestHeaderCount;
        kestrel.MaxConcurrentConnections = limits.MaxConcurrentConnections == 0 ? null : limits.MaxConcurrentConnections;
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

    [LoggerMessage(EventId = 5002, Level = LogLevel.Information, Message = "Stopped in {Seconds:0.0} s; every pool was flushed (failures are logged above) and closed")]
    private partial void LogStopped(double seconds);

    [LoggerMessage(EventId = 5003, Level = LogLevel.Information, Message = "Stopping within {Seconds} s (Daemon:ShutdownTimeout): refusing new requests, draining {Tickets} ticket(s)")]
    private partial void LogStopping(double seconds, int tickets);

    [LoggerMessage(EventId = 5004, Level = LogLevel.Error, Message = "Shutdown deadline of {Seconds} s reached before every pool was flushed; exiting anyway: clients must resend what they wrote since their last flush")]
    private partial void LogStopDeadline(double seconds);
}
