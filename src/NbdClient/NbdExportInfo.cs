using NbdClient.Protocol;

namespace NbdClient;

/// <summary>What the server told us about the export during the handshake.</summary>
public sealed record NbdExportInfo
{
    /// <summary>Export size in bytes.</summary>
    public required long Size { get; init; }

    public required NbdTransmissionFlags Flags { get; init; }

    /// <summary>Minimum block size: offsets and lengths must be multiples of it (1 when not advertised).</summary>
    public int MinimumBlockSize { get; init; } = 1;

    /// <summary>Preferred block size (4096 when not advertised).</summary>
    public int PreferredBlockSize { get; init; } = 4096;

    /// <summary>Largest READ/WRITE payload we will send: min(advertised, 32 MiB).</summary>
    public int MaximumPayload { get; init; } = NbdLimits.DefaultMaxPayload;

    /// <summary>True when structured replies were negotiated.</summary>
    public bool StructuredReplies { get; init; }

    /// <summary>Negotiated metadata contexts, name → server id (ids are opaque and 0 is valid).</summary>
    public IReadOnlyDictionary<string, uint> MetaContexts { get; init; } = new Dictionary<string, uint>();

    /// <summary>True when the connection runs over TLS.</summary>
    public bool Tls { get; init; }

    public bool IsReadOnly => (Flags & NbdTransmissionFlags.ReadOnly) != 0;
    public bool CanFlush => (Flags & NbdTransmissionFlags.SendFlush) != 0;
    public bool CanFua => (Flags & NbdTransmissionFlags.SendFua) != 0;
    public bool CanTrim => (Flags & NbdTransmissionFlags.SendTrim) != 0;
    public bool CanWriteZeroes => (Flags & NbdTransmissionFlags.SendWriteZeroes) != 0;
    // FAST_ZERO without WRITE_ZEROES is meaningless (spec); libnbd ignores it too.
    public bool CanFastZero => CanWriteZeroes && (Flags & NbdTransmissionFlags.SendFastZero) != 0;
    // DF is only meaningful with structured replies.
    public bool CanDontFragment => StructuredReplies && (Flags & NbdTransmissionFlags.SendDf) != 0;
    public bool CanMultiConn => (Flags & NbdTransmissionFlags.CanMultiConn) != 0;
    public bool CanCache => (Flags & NbdTransmissionFlags.SendCache) != 0;
    public bool CanBlockStatus => StructuredReplies && MetaContexts.Count > 0;
}

/// <summary>One extent of a block-status reply, clipped to the requested range.</summary>
/// <param name="Offset">Start of the extent in bytes.</param>
/// <param name="Length">Length in bytes (never 0).</param>
/// <param name="Flags">Context-specific flags: for base:allocation bit 0 = hole, bit 1 = zero;
/// for qemu:dirty-bitmap bit 0 = dirty; for qemu:allocation-depth the depth.</param>
public readonly record struct NbdExtent(long Offset, long Length, uint Flags)
{
    public long End => Offset + Length;
}

/// <summary>Well-known metadata context names and flags.</summary>
public static class NbdMetaContexts
{
    public const string BaseAllocation = "base:allocation";
    public const string AllocationDepth = "qemu:allocation-depth";
    public const string DirtyBitmapPrefix = "qemu:dirty-bitmap:";

    /// <summary>base:allocation: the range is a hole (unallocated).</summary>
    public const uint StateHole = 1;

    /// <summary>base:allocation: the range reads as zeroes.</summary>
    public const uint StateZero = 2;

    /// <summary>qemu:dirty-bitmap: the range is dirty.</summary>
    public const uint StateDirty = 1;
}
