using Microsoft.Extensions.Logging;

namespace NbdClient;

/// <summary>Source-generated log messages. Event ids are stable: never renumber, only add
/// (connection 1000-1099, pool 1100-1199).</summary>
internal static partial class Log
{
    [LoggerMessage(1000, LogLevel.Debug, "Connected to {Endpoint}: size={Size} flags=0x{Flags:x4} structured={Structured} contexts={Contexts} max_payload={MaxPayload}")]
    public static partial void Connected(ILogger logger, string endpoint, long size, ushort flags, bool structured, string contexts, int maxPayload);

    [LoggerMessage(1001, LogLevel.Warning, "NBD connection to {Endpoint} failed ({Reason}, {Phase}): {Message}")]
    public static partial void ConnectionFailed(ILogger logger, string endpoint, NbdConnectionFailure reason, NbdPhase phase, string message);

    [LoggerMessage(1002, LogLevel.Information, "NBD server {Endpoint} is shutting down (ESHUTDOWN); disconnecting this connection")]
    public static partial void ServerShutdown(ILogger logger, string endpoint);

    [LoggerMessage(1003, LogLevel.Debug, "Disconnected from {Endpoint}")]
    public static partial void Disconnected(ILogger logger, string endpoint);

    [LoggerMessage(1100, LogLevel.Information, "NBD pool for {Endpoint}: {Connections} connection(s), multi-conn={MultiConn}")]
    public static partial void PoolOpened(ILogger logger, string endpoint, int connections, bool multiConn);

    [LoggerMessage(1101, LogLevel.Warning, "NBD pool for {Endpoint}: reconnect attempt {Attempt} failed: {Message}")]
    public static partial void ReconnectFailed(ILogger logger, string endpoint, int attempt, string message);

    [LoggerMessage(1102, LogLevel.Information, "NBD pool for {Endpoint}: replaced a dead connection")]
    public static partial void Reconnected(ILogger logger, string endpoint);

    [LoggerMessage(1103, LogLevel.Error, "NBD pool for {Endpoint}: circuit opened after repeated connection failures; requests fail at once for {BreakSeconds} s (last error: {Message})")]
    public static partial void CircuitOpened(ILogger logger, string endpoint, double breakSeconds, string message);

    [LoggerMessage(1104, LogLevel.Information, "NBD pool for {Endpoint}: circuit closed, the server accepts connections again")]
    public static partial void CircuitClosed(ILogger logger, string endpoint);
}
