using NbdClient.Protocol;


namespace NbdClient;

/// <summary>One NBD connection in the transmission phase: many requests in flight, replies matched
/// by cookie in any order. Thread-safe. Fails once, failing everyone pending.</summary>
public sealed partial class NbdConnection : IAsyncDisposable
{
    /// <summary>Connects, runs the handshake and returns a connection ready for requests.</summary>
    public static Task<NbdConnection> ConnectAsync(NbdEndpoint endpoint, NbdClientOptions? options = null, CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    public NbdExportInfo Export => throw new NotImplementedException();

    /// <summary>Requests sent or queued and not yet answered.</summary>
    public int InFlight => throw new NotImplementedException();

    /// <summary>True once the connection failed or was closed; it accepts no new requests.</summary>
    public bool IsClosed => throw new NotImplementedException();

    /// <summary>Completes when the connection has failed or closed, with the reason.</summary>
    public Task<Exception> Completion => throw new NotImplementedException();

    /// <summary>True when a write was acknowledged on this connection since its last successful flush.</summary>
    public bool IsDirty => throw new NotImplementedException();

    /// <summary>Reads buffer.Length bytes at offset (split above the maximum payload; holes are zero-filled).</summary>
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    /// <summary>Writes data at offset (split above the maximum payload). Completes when the server acknowledged every part.</summary>
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, NbdCommandFlags flags = NbdCommandFlags.None, CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    public ValueTask WriteZeroesAsync(long offset, long length, NbdCommandFlags flags = NbdCommandFlags.None, CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    public ValueTask TrimAsync(long offset, long length, NbdCommandFlags flags = NbdCommandFlags.None, CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    public ValueTask CacheAsync(long offset, long length, CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    /// <summary>NBD_CMD_FLUSH on this connection: every write acknowledged before it is on stable storage.</summary>
    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    /// <summary>Extents of one context over [offset, offset+length): loops until covered, clips the last
    /// extent, merges neighbours with equal flags.</summary>
    public ValueTask<IReadOnlyList<NbdExtent>> GetExtentsAsync(long offset, long length, string context = NbdMetaContexts.BaseAllocation, CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    /// <summary>Waits until every write-like request submitted before this call has been answered.
    /// Throws if one of them failed.</summary>
    public ValueTask DrainWritesAsync(CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    /// <summary>Soft disconnect: waits for requests in flight (bounded), sends NBD_CMD_DISC, closes.</summary>
    public ValueTask DisconnectAsync(CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    public ValueTask DisposeAsync() => throw new NotImplementedException();
}
