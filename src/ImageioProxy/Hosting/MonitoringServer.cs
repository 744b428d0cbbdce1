using System.Net;
using ImageioProxy.Configuration;
using ImageioProxy.Observability;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Options;
using OpenTelemetry.Metrics;

namespace ImageioProxy.Hosting;

/// <summary>The monitoring listener (Monitoring:Host, Monitoring:Port): /metrics (Prometheus text),
/// /health/live and /health/ready. A host of its own, like the control service, so that none of it can
/// be reached on the data port, and nothing of the data API on this one. Runs inside the data host's
/// lifetime as a hosted service and shares its services (ticket store, meter provider, logging).</summary>
public sealed class MonitoringServer : IHostedService, IAsyncDisposable
{
    public const string MetricsPath = "/metrics";
    public const string LivePath = "/health/live";
    public const string ReadyPath = "/health/ready";
    private const string ReadyTag = "ready";

    private readonly MonitoringOptions _options;
    private readonly IServiceProvider _data;
    private readonly ILogger<MonitoringServer> _logger;
    private WebApplication? _app;

    public MonitoringServer(IOptions<MonitoringOptions> options, IServiceProvider data, ILogger<MonitoringServer> logger)
    {
        _options = options.Value;
        _data = data;
        _logger = logger;
    }

    /// <summary>The bound TCP port once started (useful with Monitoring:Port=0); null when disabled.</summary>
    public int? Port { get; private set; }

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        if (_options.Port is not int port)
        {
            return;
        }
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
        // One logging pipeline for the whole process (same providers, filters and levels).
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton(_data.GetRequiredService<ILoggerFactory>());
        builder.Services.AddSingleton(_data.GetRequiredService<ServiceReadiness>());
        builder.Services.AddSingleton(_data.GetRequiredService<Tickets.TicketStore>());
        builder.Services.AddSingleton(_data.GetRequiredService<IOptions<DaemonOptions>>());
        builder.Services.AddSingleton(_data.GetRequiredService<IOptions<MonitoringOptions>>());
        builder.Services.AddHealthChecks()
            .AddCheck<ServingHealthCheck>("serving", tags: [ReadyTag])
            .AddCheck<StartupTicketBackendHealthCheck>("startup-ticket-backend", tags: [ReadyTag]);
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Limits.MaxRequestBodySize = 0; // GET only
            kestrel.Listen(EndPoint(_options.Host, port), listen => listen.Protocols = HttpProtocols.Http1);
        });

        var app = builder.Build();
        if (_options.Prometheus)
        {
            var meterProvider = _data.GetRequiredService<MeterProvider>();
            app.UseOpenTelemetryPrometheusScrapingEndpoint(meterProvider, context => context.Request.Path == MetricsPath,
                path: null, configureBranchedPipeline: null, optionsName: null);
        }
        // Liveness: the process answers; no dependency is checked (a dead qemu-nbd must not restart us).
        app.UseHealthChecks(LivePath, new HealthCheckOptions { Predicate = _ => false });
        app.UseHealthChecks(ReadyPath, new HealthCheckOptions { Predicate = check => check.Tags.Contains(ReadyTag) });
        app.Run(context =>
        {
            context.Response.StatusCode = StatusCodes.Status404NotFound;
            context.Response.ContentType = "text/plain; charset=UTF-8";
            return context.Response.WriteAsync($"No handler for '{context.Request.Path}': expecting {MetricsPath}, {LivePath} or {ReadyPath}\n", context.RequestAborted);
        });
        await app.StartAsync(cancellationToken);
        _app = app;
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses.FirstOrDefault() ?? "";
        Port = Uri.TryCreate(address.Replace("[::]", "localhost", StringComparison.Ordinal), UriKind.Absolute, out var uri) ? uri.Port : port;
        _logger.MonitoringListening(address);
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_app is not null)
        {
            await _app.StopAsync(cancellationToken);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_app is not null)
        {
            await _app.DisposeAsync();
            _app = null;
        }
    }

    internal static IPEndPoint EndPoint(string host, int port) => host switch
    {
        "::" => new IPEndPoint(IPAddress.IPv6Any, port),
        "" or "0.0.0.0" => new IPEndPoint(IPAddress.Any, port),
        "localhost" => new IPEndPoint(IPAddress.Loopback, port),
        _ when IPAddress.TryParse(host, out var address) => new IPEndPoint(address, port),
        _ => new IPEndPoint(Dns.GetHostAddresses(host)[0], port),
    };
}
