using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Reflection;

namespace NbdClient;

/// <summary>Fixed names of NbdClient's meter and activity source, for OpenTelemetry's AddMeter/AddSource.</summary>
public static class NbdTelemetry
{
    public const string MeterName = "NbdClient";
    public const string ActivitySourceName = "NbdClient";

    private static readonly string? Version = typeof(NbdTelemetry).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;

    internal static readonly Meter Meter = new(MeterName, Version);
    internal static readonly ActivitySource ActivitySource = new(ActivitySourceName, Version);

    internal static readonly Histogram<double> RequestDuration = Meter.CreateHistogram(
        "nbd.client.request.duration", unit: "s", description: "Time from sending an NBD request to its last reply chunk.",
        advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300] });

    internal static readonly UpDownCounter<long> RequestsInFlight = Meter.CreateUpDownCounter<long>(
        "nbd.client.requests.in_flight", unit: "{request}", description: "NBD requests sent or queued and not yet answered.");

    internal static readonly Counter<long> Bytes = Meter.CreateCounter<long>(
        "nbd.client.io", unit: "By", description: "Bytes moved by NBD requests, by command (read, write, write_zeroes, trim).");

    internal static readonly UpDownCounter<long> Connections = Meter.CreateUpDownCounter<long>(
        "nbd.client.connections", unit: "{connection}", description: "Open NBD connections.");

    internal static readonly Counter<long> ConnectionFailures = Meter.CreateCounter<long>(
        "nbd.client.connection.failures", unit: "{connection}", description: "NBD connections that failed, by reason.");

    internal static readonly Counter<long> Reconnects = Meter.CreateCounter<long>(
        "nbd.client.reconnects", unit: "{connection}", description: "Connections a pool opened to replace dead ones.");

    internal const string CommandTag = "nbd.command";
    internal const string ReasonTag = "nbd.failure.reason";

    internal static string CommandName(NbdCommand command) => command switch
    {
        NbdCommand.Read => "read",
        NbdCommand.Write => "write",
        NbdCommand.Flush => "flush",
        NbdCommand.Trim => "trim",
        NbdCommand.Cache => "cache",
        NbdCommand.WriteZeroes => "write_zeroes",
        NbdCommand.BlockStatus => "block_status",
        NbdCommand.Disconnect => "disconnect",
        _ => "other",
    };
}
