using ImageioProxy.Hosting;

namespace ImageioProxy.Observability;

/// <summary>The CLOSE line: one Information entry per closed data connection with its operation counts,
/// bytes and throughput (imageio logs the same at INFO, imageio-api.md §2). Never the ticket id: the
/// transfer id identifies the transfer.</summary>
public static class ConnectionCloseLog
{
    public static void Write(ILogger logger, ClientConnection connection, TimeSpan duration)
    {
        if (!logger.IsEnabled(LogLevel.Information))
        {
            return;
        }
        var s = connection.Stats;
        var client = s.ForwardedClient is { } forwarded ? $"{forwarded} via {connection.Peer}" : connection.Peer;
        logger.ConnectionClosed(connection.Id, client, connection.Ticket?.Spec.TransferId ?? "-", duration.TotalSeconds, s.Requests,
            s.Ops(DataOperationKind.Read), s.Bytes(DataOperationKind.Read),
            s.Ops(DataOperationKind.Write), s.Bytes(DataOperationKind.Write),
            s.Ops(DataOperationKind.Zero), s.Bytes(DataOperationKind.Zero),
            s.Ops(DataOperationKind.Flush), s.Time(DataOperationKind.Flush).TotalSeconds,
            s.Ops(DataOperationKind.Extents), s.Ops(DataOperationKind.Checksum), s.DataThroughputMiBps());
    }
}
