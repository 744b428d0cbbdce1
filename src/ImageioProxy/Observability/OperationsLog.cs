namespace ImageioProxy.Observability;

// Event ids 6000-6099: operations (connections, requests, monitoring, systemd). Shipped ids and method
// names are stable: dashboards and journald queries filter on them.
internal static partial class OperationsLog
{
    [LoggerMessage(EventId = 6001, Level = LogLevel.Information,
        Message = "CLOSE connection={ConnectionId} client={Client} transfer={TransferId} duration={DurationSeconds:0.000}s requests={Requests} "
            + "read={ReadOps} ops {ReadBytes} bytes, write={WriteOps} ops {WriteBytes} bytes, zero={ZeroOps} ops {ZeroBytes} bytes, "
            + "flush={FlushOps} ops {FlushSeconds:0.000}s, extents={ExtentsOps} ops, checksum={ChecksumOps} ops, throughput={ThroughputMiBps:0.00} MiB/s")]
    public static partial void ConnectionClosed(this ILogger logger, string connectionId, string client, string transferId, double durationSeconds,
        int requests, long readOps, long readBytes, long writeOps, long writeBytes, long zeroOps, long zeroBytes, long flushOps, double flushSeconds,
        long extentsOps, long checksumOps, double throughputMiBps);

    [LoggerMessage(EventId = 6002, Level = LogLevel.Debug,
        Message = "{Method} {Path} {Protocol} -> {StatusCode} in {ElapsedMilliseconds:0.0} ms client={Client} scheme={Scheme} connection={ConnectionId}")]
    public static partial void RequestFinished(this ILogger logger, string method, string path, string protocol, int statusCode,
        double elapsedMilliseconds, string client, string scheme, string connectionId);

    [LoggerMessage(EventId = 6003, Level = LogLevel.Information, Message = "Monitoring (/metrics, /health/live, /health/ready) on {Address}")]
    public static partial void MonitoringListening(this ILogger logger, string address);

    [LoggerMessage(EventId = 6004, Level = LogLevel.Information, Message = "Told systemd: {State}")]
    public static partial void SystemdNotified(this ILogger logger, string state);

    [LoggerMessage(EventId = 6005, Level = LogLevel.Warning, Message = "Not ready: the NBD backend of transfer {TransferId} does not answer: {Reason}")]
    public static partial void BackendNotReady(this ILogger logger, string transferId, string reason);

    [LoggerMessage(EventId = 6006, Level = LogLevel.Information, Message = "Telemetry: OTLP export {Otlp}, Prometheus scrape endpoint {Prometheus}")]
    public static partial void TelemetryConfigured(this ILogger logger, string otlp, string prometheus);

    [LoggerMessage(EventId = 6007, Level = LogLevel.Information, Message = "Trusting X-Forwarded-For/Proto from {Proxies}")]
    public static partial void ForwardedHeadersTrusted(this ILogger logger, string proxies);
}
