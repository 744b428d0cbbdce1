namespace ImageioProxy.Observability;

/// <summary>What a data request did, for metrics and the per-connection CLOSE line (imageio times the
/// same ops: read, write, zero, flush; imageio-api.md §2).</summary>
public enum DataOperationKind
{
    /// <summary>GET: bytes sent to the client.</summary>
    Read,
    /// <summary>PUT: bytes received from the client.</summary>
    Write,
    /// <summary>PATCH zero: bytes zeroed.</summary>
    Zero,
    /// <summary>PATCH flush, or the flush of PUT ?flush=y and PATCH zero with "flush": true.</summary>
    Flush,
    /// <summary>GET …/extents.</summary>
    Extents,
    /// <summary>GET …/checksum.</summary>
    Checksum,
}

internal static class DataOperationNames
{
    public const int Count = 6;

    /// <summary>The metric attribute value and CLOSE-line label of each kind.</summary>
    public static string Name(DataOperationKind kind) => kind switch
    {
        DataOperationKind.Read => "read",
        DataOperationKind.Write => "write",
        DataOperationKind.Zero => "zero",
        DataOperationKind.Flush => "flush",
        DataOperationKind.Extents => "extents",
        DataOperationKind.Checksum => "checksum",
        _ => "other",
    };
}
