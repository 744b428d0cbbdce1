using NbdClient;
namespace NbdClient.Protocol;

// Values from the NBD protocol spec (NetworkBlockDevice/nbd doc/proto.md); see
// ../shared/docs/nbd-client-spec.md §2 for the checklist they were taken from.

internal static class NbdMagic
{
    public const ulong InitPasswd = 0x4e42444d41474943; // "NBDMAGIC"
    public const ulong IHaveOpt = 0x49484156454F5054;   // "IHAVEOPT"
    public const ulong OldStyle = 0x00420281861253;
    public const ulong OptionReply = 0x0003e889045565a9;
    public const uint Request = 0x25609513;
    public const uint SimpleReply = 0x67446698;
    public const uint StructuredReply = 0x668e33ef;
    public const uint ExtendedReply = 0x6e8a278c;
}

/// <summary>Handshake flags sent by the server (16 bit) and echoed by the client (32 bit).</summary>
[Flags]
internal enum NbdHandshakeFlags : ushort
{
    None = 0,
    FixedNewstyle = 1 << 0,
    NoZeroes = 1 << 1,
}

internal enum NbdOption : uint
{
    ExportName = 1,
    Abort = 2,
    List = 3,
    StartTls = 5,
    Info = 6,
    Go = 7,
    StructuredReply = 8,
    ListMetaContext = 9,
    SetMetaContext = 10,
    ExtendedHeaders = 11,
}

internal enum NbdOptionReplyType : uint
{
    Ack = 1,
    Server = 2,
    Info = 3,
    MetaContext = 4,
    ErrUnsup = 0x80000001,
    ErrPolicy = 0x80000002,
    ErrInvalid = 0x80000003,
    ErrPlatform = 0x80000004,
    ErrTlsRequired = 0x80000005,
    ErrUnknown = 0x80000006,
    ErrShutdown = 0x80000007,
    ErrBlockSizeRequired = 0x80000008,
    ErrTooBig = 0x80000009,
    ErrExtHeaderRequired = 0x8000000A,
}

internal enum NbdInfoType : ushort
{
    Export = 0,
    Name = 1,
    Description = 2,
    BlockSize = 3,
}

internal enum NbdReplyChunkType : ushort
{
    None = 0,
    OffsetData = 1,
    OffsetHole = 2,
    BlockStatus = 5,
    BlockStatusExt = 6,
    Error = 0x8001,        // 2^15 + 1 (not 0x8000: a common mistake, see nbd-client-spec.md §2.9)
    ErrorOffset = 0x8002,  // 2^15 + 2
}

internal static class NbdReplyFlags
{
    public const ushort Done = 1;
}

internal static class NbdLimits
{
    /// <summary>Largest payload any server must accept (2^25); the default when nothing is advertised.</summary>
    public const int DefaultMaxPayload = 32 * 1024 * 1024;
    /// <summary>Strings (names, messages) may not exceed 4096 bytes.</summary>
    public const int MaxString = 4096;
    /// <summary>libnbd refuses option replies above 64 MiB; so do we.</summary>
    public const int MaxOptionReply = 64 * 1024 * 1024;
    /// <summary>libnbd kills the connection for a chunk above 64 MiB + 8.</summary>
    public const int MaxChunkPayload = 64 * 1024 * 1024 + 8;
    public const int RequestHeaderSize = 28;
    public const int SimpleReplySize = 16;
    public const int StructuredReplyHeaderSize = 20;
    public const int DefaultTcpPort = 10809;
}
