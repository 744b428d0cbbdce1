using NbdClient.Protocol;
namespace NbdClient;

/// <summary>A pool of pipelined connections to one export. One connection, or up to
/// <see cref="NbdPoolOptions.MaxConnections"/> when the export advertises CAN_MULTI_CONN.
/// Requests go to the least-loaded live connection; dead connections are replaced on next use.
/// Overlapping write-like requests are serialised in submission order.</summary>
public sealed class NbdPool : IAsyncDisposable
{
    public static Task<NbdPool> ConnectAsync(NbdEndpoint endpoint, NbdPoolOptions? options = null, CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    public NbdExportInfo Export => throw new NotImplementedException();

    /// <summary>Live connections.</summary>
    public int ConnectionCount => throw new NotImplementedException();

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, NbdCommandFlags flags = NbdCommandFlags.None, CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    public ValueTask WriteZeroesAsync(long offset, long length, NbdCommandFlags flags = NbdCommandFlags.None, CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    public ValueTask TrimAsync(long offset, long length, NbdCommandFlags flags = NbdCommandFlags.None, CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    public ValueTask<IReadOnlyList<NbdExtent>> GetExtentsAsync(long offset, long length, string context = NbdMetaContexts.BaseAllocation, CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    /// <summary>The flush barrier: waits for every write-like request submitted before the call (on every
    /// connection) to be acknowledged, then sends NBD_CMD_FLUSH to one connection when the export has
    /// CAN_MULTI_CONN, else to every connection that wrote since its last flush. Throws if a covered write failed.</summary>
    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    /// <summary>Waits for every write-like request submitted before the call to be acknowledged.</summary>
    public ValueTask DrainAsync(CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    public ValueTask DisposeAsync() => throw new NotImplementedException();
}
