namespace NbdClient;

// Public protocol enums (values from proto.md, see nbd-client-spec.md §2).

/// <summary>Transmission flags of an export (proto.md "Transmission flags").</summary>
[Flags]
public enum NbdTransmissionFlags : ushort
{
    None = 0,
    HasFlags = 1 << 0,
    ReadOnly = 1 << 1,
    SendFlush = 1 << 2,
    SendFua = 1 << 3,
    Rotational = 1 << 4,
    SendTrim = 1 << 5,
    SendWriteZeroes = 1 << 6,
    SendDf = 1 << 7,
    CanMultiConn = 1 << 8,
    SendResize = 1 << 9,
    SendCache = 1 << 10,
    SendFastZero = 1 << 11,
    BlockStatusPayload = 1 << 12,
}

public enum NbdCommand : ushort
{
    Read = 0,
    Write = 1,
    Disconnect = 2,
    Flush = 3,
    Trim = 4,
    Cache = 5,
    WriteZeroes = 6,
    BlockStatus = 7,
}

/// <summary>Per-command flags (proto.md "Command flags").</summary>
[Flags]
public enum NbdCommandFlags : ushort
{
    None = 0,
    /// <summary>Force unit access: reply only once the data is on stable storage.</summary>
    Fua = 1 << 0,
    /// <summary>WRITE_ZEROES: the server must not punch a hole.</summary>
    NoHole = 1 << 1,
    /// <summary>READ: do not fragment the reply.</summary>
    DontFragment = 1 << 2,
    /// <summary>BLOCK_STATUS: one extent per context.</summary>
    RequestOne = 1 << 3,
    /// <summary>WRITE_ZEROES: fail with ENOTSUP unless zeroing is fast.</summary>
    FastZero = 1 << 4,
}

/// <summary>Error values of the NBD protocol; they are Linux errno numbers.</summary>
public enum NbdErrorCode : uint
{
    None = 0,
    EPERM = 1,
    EIO = 5,
    ENOMEM = 12,
    EINVAL = 22,
    ENOSPC = 28,
    EOVERFLOW = 75,
    ENOTSUP = 95,
    ESHUTDOWN = 108,
}
