using System.Net;
using System.Reflection;
using ImageioProxy.Configuration;
using ImageioProxy.Observability;
using Microsoft.AspNetCore.HttpOverrides;
using Microsoft.Extensions.Configuration.EnvironmentVariables;
using Microsoft.Extensions.Configuration.Json;
using Microsoft.Extensions.Hosting.Systemd;
using Microsoft.Extensions.Logging.Console;
using Microsoft.Extensions.Options;
using NbdClient;
using OpenTelemetry;
using OpenTelemetry.Exporter;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace ImageioProxy.Hosting;

/// <summary>Everything operators need around the data service: configuration file, telemetry,
/// monitoring listener, systemd notification, trusted reverse proxies and request logging
/// (docs/operations.md). ProxyServer calls the three entry points below.</summary>
public static class OperationsSetup
{
    /// <summary>Configuration key naming a JSON configuration file (e.g. /etc/imageio-proxy/imageio-proxy.json).</summary>
    public const string ConfigFileKey = "ConfigFile";

    /// <summary>ASP.NET Core's and Kestrel's meters (http.server.*, kestrel.*), kept under their own names.</summary>
    public static readonly string[] AspNetCoreMeters = ["Microsoft.AspNetCore.Hosting", "Microsoft.AspNetCore.Server.Kestrel"];

    /// <summary>Adds the file named by ConfigFile (command line or environment) above appsettings.json and
    /// below the environment and the command line, so that those still override it.</summary>
    public static void AddConfigFile(ConfigurationManager config)
    {
        var path = config[ConfigFileKey];
        if (string.IsNullOrEmpty(path))
        {
            return;
        }
        var full = Path.GetFullPath(path);
        if (!File.Exists(full))
        {
            throw new InvalidOperationException($"Invalid configuration: the file {full} given by {ConfigFileKey} does not exist");
        }
        var source = new JsonConfigurationSource { Path = full, Optional = false, ReloadOnChange = false };
        source.ResolveFileProvider();
        var sources = config.Sources;
        var at = sources.Count;
        for (var i = sources.Count - 1; i >= 0; i--)
        {
            if (sources[i] is EnvironmentVariablesConfigurationSource { Prefix: null or "" })
            {
                at = i;
                break;
            }
        }
        sources.Insert(at, source);
    }

    /// <summary>Registers telemetry, the monitoring listener, readiness and systemd support, and the
    /// trusted proxies. Returns the errors of the operations sections (empty when valid).</summary>
    public static IReadOnlyList<string> AddOperations(WebApplicationBuilder builder)
    {
        var config = builder.Configuration;
        var services = builder.Services;
        services.Configure<MonitoringOptions>(config.GetSection(MonitoringOptions.Section));
        services.Configure<TelemetryOptions>(config.GetSection(TelemetryOptions.Section));
        services.Configure<ForwardedHeadersSettings>(config.GetSection(ForwardedHeadersSettings.Section));
        var monitoring = config.GetSection(MonitoringOptions.Section).Get<MonitoringOptions>() ?? new();
        var telemetry = config.GetSection(TelemetryOptions.Section).Get<TelemetryOptions>() ?? new();
        var forwarded = config.GetSection(ForwardedHeadersSettings.Section).Get<ForwardedHeadersSettings>() ?? new();
        var errors = Validate(monitoring, telemetry, forwarded, out var proxies, out var networks);

        services.AddSingleton<ProxyMetrics>();
        services.AddSingleton<ISystemdNotifier, SystemdNotifier>();
        services.AddSingleton<ServiceReadiness>();
        services.AddSingleton<MonitoringServer>();
        services.AddHostedService(sp => sp.GetRequiredService<MonitoringServer>());

        var formatter = config["Logging:Console:FormatterName"];
        if (!string.IsNullOrEmpty(formatter))
        {
            // The slim builder fixes the simple formatter in code; honour the configured one (json, systemd).
            builder.Logging.AddConsole(o => o.FormatterName = formatter);
        }
        else if (SystemdHelpers.IsSystemdService())
        {
            // journald: "<6>message" priority prefixes, no colours, one line per entry.
            builder.Logging.AddSystemdConsole(o => o.TimestampFormat = null);
        }

        AddTelemetry(builder, monitoring, telemetry);

        if (proxies.Count > 0 || networks.Count > 0)
        {
            services.Configure<ForwardedHeadersOptions>(o =>
            {
                o.ForwardedHeaders = ForwardedHeaders.XForwardedFor | ForwardedHeaders.XForwardedProto;
                o.ForwardLimit = forwarded.ForwardLimit;
                // Only the configured proxies: ASP.NET Core's defaults trust loopback (ecosystem.md §1.5).
                o.KnownProxies.Clear();
                o.KnownIPNetworks.Clear();
                foreach (var proxy in proxies)
                {
                    o.KnownProxies.Add(proxy);
                }
                foreach (var network in networks)
                {
                    o.KnownIPNetworks.Add(network);
                }
            });
        }
        return errors;
    }

    /// <summary>The data pipeline in front of DataApi: trusted X-Forwarded-* first, then request logging.</summary>
    public static void UseOperations(WebApplication data)
    {
        var forwarded = data.Services.GetRequiredService<IOptions<ForwardedHeadersSettings>>().Value;
        var logger = data.Services.GetRequiredService<ILoggerFactory>().CreateLogger("ImageioProxy.Operations");
        if (forwarded.KnownProxies.Length > 0 || forwarded.KnownNetworks.Length > 0)
        {
            data.UseForwardedHeaders();
            logger.ForwardedHeadersTrusted(string.Join(", ", forwarded.KnownProxies.Concat(forwarded.KnownNetworks)));
        }
        data.UseMiddleware<RequestLogging>();
        var telemetry = data.Services.GetRequiredService<IOptions<TelemetryOptions>>().Value;
        var monitoring = data.Services.GetRequiredService<IOptions<MonitoringOptions>>().Value;
        logger.TelemetryConfigured(OtlpEndpoint(telemetry, data.Configuration) ?? "off",
            monitoring.Port is not null && monitoring.Prometheus ? MonitoringServer.MetricsPath + " on the monitoring listener" : "off");
    }

    private static void AddTelemetry(WebApplicationBuilder builder, MonitoringOptions monitoring, TelemetryOptions telemetry)
    {
        var otlp = OtlpEndpoint(telemetry, builder.Configuration);
        var protocol = telemetry.OtlpProtocol == "http/protobuf" ? OtlpExportProtocol.HttpProtobuf : OtlpExportProtocol.Grpc;
        var version = typeof(OperationsSetup).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;
        var otel = builder.Services.AddOpenTelemetry()
            .ConfigureResource(resource => resource.AddService(telemetry.ServiceName, serviceVersion: version))
            .WithMetrics(metrics =>
            {
                metrics.AddMeter(ProxyMetrics.MeterName, NbdTelemetry.MeterName);
                metrics.AddMeter(AspNetCoreMeters);
                // Uploads, downloads and flushes last minutes: the default buckets stop at 10 s.
                var longBuckets = new ExplicitBucketHistogramConfiguration { Boundaries = ProxyMetrics.LongDurationBuckets };
                metrics.AddView("http.server.request.duration", longBuckets);
                metrics.AddView("kestrel.connection.duration", longBuckets);
                if (telemetry.RuntimeMetrics)
                {
                    metrics.AddRuntimeInstrumentation();
                }
                if (otlp is not null)
                {
                    metrics.AddOtlpExporter(o => ConfigureOtlp(o, otlp, protocol, "/v1/metrics"));
                }
                if (monitoring.Port is not null && monitoring.Prometheus)
                {
                    // Scrapes must see current values; Prometheus itself paces them.
                    metrics.AddPrometheusExporter(o => o.ScrapeResponseCacheDurationMilliseconds = 0);
                }
            });
        if (telemetry.Traces)
        {
            otel.WithTracing(tracing =>
            {
                // First processor: exporters added after it only ever see redacted spans.
                tracing.AddProcessor(new TicketIdRedactingProcessor());
                tracing.AddAspNetCoreInstrumentation(o =>
                {
                    o.EnrichWithHttpRequest = (activity, _) => TicketIdRedaction.Redact(activity);
                    o.Filter = context => !IsMonitoringPath(context.Request.Path);
                });
                tracing.AddSource(NbdTelemetry.ActivitySourceName);
                if (otlp is not null)
                {
                    tracing.AddOtlpExporter(o => ConfigureOtlp(o, otlp, protocol, "/v1/traces"));
                }
            });
        }
    }

    private static bool IsMonitoringPath(PathString path)
        => path == MonitoringServer.MetricsPath || path.StartsWithSegments("/health", StringComparison.Ordinal);

    /// <summary>Telemetry:OtlpEndpoint, else OTEL_EXPORTER_OTLP_ENDPOINT, else null (no export).</summary>
    private static string? OtlpEndpoint(TelemetryOptions telemetry, IConfiguration config)
    {
        if (telemetry.OtlpEndpoint.Length > 0)
        {
            return telemetry.OtlpEndpoint;
        }
        var fromEnvironment = config["OTEL_EXPORTER_OTLP_ENDPOINT"];
        return string.IsNullOrEmpty(fromEnvironment) ? null : fromEnvironment;
    }

    private static void ConfigureOtlp(OtlpExporterOptions options, string endpoint, OtlpExportProtocol protocol, string signalPath)
    {
        options.Protocol = protocol;
        var uri = new Uri(endpoint);
        // A programmatic endpoint is used as is: http/protobuf needs the signal's path appended.
        options.Endpoint = protocol == OtlpExportProtocol.HttpProtobuf && uri.AbsolutePath is "/" or ""
            ? new Uri(uri, signalPath)
            : uri;
    }

    private static List<string> Validate(MonitoringOptions monitoring, TelemetryOptions telemetry, ForwardedHeadersSettings forwarded,
        out List<IPAddress> proxies, out List<System.Net.IPNetwork> networks)
    {
        var errors = new List<string>();
        proxies = [];
        networks = [];
        if (monitoring.Port is < 0 or > 65535)
        {
            errors.Add($"Monitoring:Port={monitoring.Port} is not a port number (0 picks a free one; leave it unset to disable monitoring)");
        }
        if (monitoring.ReadyTimeout < 1)
        {
            errors.Add($"Monitoring:ReadyTimeout={monitoring.ReadyTimeout} must be at least 1 (seconds)");
        }
        if (telemetry.OtlpProtocol is not ("grpc" or "http/protobuf"))
        {
            errors.Add($"Telemetry:OtlpProtocol={telemetry.OtlpProtocol} must be grpc or http/protobuf");
        }
        if (telemetry.OtlpEndpoint.Length > 0 && !Uri.TryCreate(telemetry.OtlpEndpoint, UriKind.Absolute, out _))
        {
            errors.Add($"Telemetry:OtlpEndpoint={telemetry.OtlpEndpoint} is not an absolute URL such as http://collector:4317");
        }
        foreach (var proxy in forwarded.KnownProxies)
        {
            if (IPAddress.TryParse(proxy, out var address))
            {
                proxies.Add(address);
            }
            else
            {
                errors.Add($"ForwardedHeaders:KnownProxies: '{proxy}' is not an IP address");
            }
        }
        foreach (var network in forwarded.KnownNetworks)
        {
            if (System.Net.IPNetwork.TryParse(network, out var parsed))
            {
                networks.Add(parsed);
            }
            else
            {
                errors.Add($"ForwardedHeaders:KnownNetworks: '{network}' is not a network in CIDR notation such as 10.0.0.0/8");
            }
        }
        if (forwarded.ForwardLimit < 1)
        {
            errors.Add($"ForwardedHeaders:ForwardLimit={forwarded.ForwardLimit} must be at least 1");
        }
        return errors;
    }
}
