namespace ImageioProxy.Configuration;

// Operations sections (docs/operations.md): monitoring listener, telemetry export, trusted proxies.
// Like the others, every key can be given as --Section:Key=value, Section__Key or in the JSON file.

/// <summary>[Monitoring]: a separate listener for /metrics, /health/live and /health/ready. Off unless
/// Port is set; never served on the data port (the data port is reachable by clients).</summary>
public sealed class MonitoringOptions
{
    public const string Section = "Monitoring";

    /// <summary>Address to listen on: "localhost" (the default), "::", "0.0.0.0" or an IP address.</summary>
    public string Host { get; set; } = "localhost";

    /// <summary>TCP port; unset = no monitoring listener; 0 picks a free port.</summary>
    public int? Port { get; set; }

    /// <summary>Serve Prometheus text at /metrics (OpenTelemetry's Prometheus exporter).</summary>
    public bool Prometheus { get; set; } = true;

    /// <summary>Seconds /health/ready waits for the startup ticket's NBD handshake before it answers 503.</summary>
    public int ReadyTimeout { get; set; } = 5;
}

/// <summary>[Telemetry]: OpenTelemetry export. Metrics and traces are always collected in process;
/// they leave it only through OTLP (when an endpoint is set) or the /metrics scrape endpoint.</summary>
public sealed class TelemetryOptions
{
    public const string Section = "Telemetry";

    /// <summary>service.name of the OpenTelemetry resource.</summary>
    public string ServiceName { get; set; } = "imageio-proxy";

    /// <summary>OTLP collector URL, e.g. http://collector:4317 (grpc) or http://collector:4318 (http/protobuf).
    /// Empty = OTEL_EXPORTER_OTLP_ENDPOINT if set, else no OTLP export.</summary>
    public string OtlpEndpoint { get; set; } = "";

    /// <summary>"grpc" or "http/protobuf".</summary>
    public string OtlpProtocol { get; set; } = "grpc";

    /// <summary>Collect spans (one per HTTP request, child spans nbd.flush, nbd.write_zeroes, nbd.connect).</summary>
    public bool Traces { get; set; } = true;

    /// <summary>Add .NET runtime metrics (GC, thread pool, exceptions).</summary>
    public bool RuntimeMetrics { get; set; } = true;
}

/// <summary>[ForwardedHeaders]: reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are honoured.
/// Empty lists (the default) = the headers are ignored from everyone (ecosystem.md §1.5).</summary>
public sealed class ForwardedHeadersSettings
{
    public const string Section = "ForwardedHeaders";

    /// <summary>IP addresses of trusted proxies, e.g. ["127.0.0.1", "::1"].</summary>
    public string[] KnownProxies { get; set; } = [];

    /// <summary>Trusted proxy networks in CIDR notation, e.g. ["10.0.0.0/8"].</summary>
    public string[] KnownNetworks { get; set; } = [];

    /// <summary>How many proxies of a chain are unwound (X-Forwarded-For entries read from the right).</summary>
    public int ForwardLimit { get; set; } = 1;
}
