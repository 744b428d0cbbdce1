using NbdClient;

namespace ImageioProxy.Checksums;

/// <summary>What <see cref="BlockHash"/> reads an image through: the ticket's NBD pool in the service,
/// an in-memory image in tests.</summary>
public interface IChecksumSource
{
    /// <summary>Reads exactly <c>buffer.Length</c> bytes at <paramref name="offset"/>. Called with several
    /// reads in flight, so it must be safe for concurrent use.</summary>
    ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct);

    /// <summary>base:allocation extents over [offset, offset+length). Flags bit 1
    /// (<see cref="NbdMetaContexts.StateZero"/>) marks a range that reads as zeroes. Ranges not covered by
    /// the returned extents are read; a source without block status may return an empty list.</summary>
    ValueTask<IReadOnlyList<NbdExtent>> GetExtentsAsync(long offset, long length, CancellationToken ct);
}
