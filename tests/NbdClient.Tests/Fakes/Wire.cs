using System.Buffers;
using System.Buffers.Binary;
using System.Globalization;
using System.Text;

namespace NbdClient.Tests.Fakes;

/// <summary>NBD wire constants, written from the protocol spec (nbd-client-spec.md §2) independently of
/// the client's Protocol/NbdConstants.cs: the fake server is a second implementation of the format, so a
/// constant that is wrong in the client is not silently wrong here too.</summary>
public static class Wire
{
    public const ulong NbdMagic = 0x4e42444d41474943;       // "NBDMAGIC"
    public const ulong IHaveOpt = 0x49484156454F5054;       // "IHAVEOPT"
    public const ulong OldStyleMagic = 0x00420281861253;
    public const ulong OptReplyMagic = 0x0003e889045565a9;
    public const uint RequestMagic = 0x25609513;
    public const uint SimpleReplyMagic = 0x67446698;
    public const uint StructuredReplyMagic = 0x668e33ef;

    public const ushort GFlagFixedNewstyle = 1;
    public const ushort GFlagNoZeroes = 2;

    public const uint OptExportName = 1;
    public const uint OptAbort = 2;
    public const uint OptList = 3;
    public const uint OptStartTls = 5;
    public const uint OptInfo = 6;
    public const uint OptGo = 7;
    public const uint OptStructuredReply = 8;
    public const uint OptListMetaContext = 9;
    public const uint OptSetMetaContext = 10;
    public const uint OptExtendedHeaders = 11;

    public const uint RepAck = 1;
    public const uint RepServer = 2;
    public const uint RepInfo = 3;
    public const uint RepMetaContext = 4;
    public const uint RepErrUnsup = 0x80000001;
    public const uint RepErrPolicy = 0x80000002;
    public const uint RepErrInvalid = 0x80000003;
    public const uint RepErrPlatform = 0x80000004;
    public const uint RepErrTlsReqd = 0x80000005;
    public const uint RepErrUnknown = 0x80000006;
    public const uint RepErrShutdown = 0x80000007;
    public const uint RepErrBlockSizeReqd = 0x80000008;
    public const uint RepErrTooBig = 0x80000009;

    public const ushort InfoExport = 0;
    public const ushort InfoName = 1;
    public const ushort InfoDescription = 2;
    public const ushort InfoBlockSize = 3;

    public const ushort CmdRead = 0;
    public const ushort CmdWrite = 1;
    public const ushort CmdDisc = 2;
    public const ushort CmdFlush = 3;
    public const ushort CmdTrim = 4;
    public const ushort CmdCache = 5;
    public const ushort CmdWriteZeroes = 6;
    public const ushort CmdBlockStatus = 7;

    public const ushort CmdFlagFua = 0x01;
    public const ushort CmdFlagNoHole = 0x02;
    public const ushort CmdFlagDf = 0x04;
    public const ushort CmdFlagReqOne = 0x08;
    public const ushort CmdFlagFastZero = 0x10;

    public const ushort TfHasFlags = 0x0001;
    public const ushort TfReadOnly = 0x0002;
    public const ushort TfSendFlush = 0x0004;
    public const ushort TfSendFua = 0x0008;
    public const ushort TfRotational = 0x0010;
    public const ushort TfSendTrim = 0x0020;
    public const ushort TfSendWriteZeroes = 0x0040;
    public const ushort TfSendDf = 0x0080;
    public const ushort TfCanMultiConn = 0x0100;
    public const ushort TfSendCache = 0x0400;
    public const ushort TfSendFastZero = 0x0800;

    public const ushort ChunkNone = 0;
    public const ushort ChunkOffsetData = 1;
    public const ushort ChunkOffsetHole = 2;
    public const ushort ChunkBlockStatus = 5;
    public const ushort ChunkError = 0x8001;        // 2^15 + 1
    public const ushort ChunkErrorOffset = 0x8002;  // 2^15 + 2
    public const ushort ReplyFlagDone = 1;

    public const uint EPERM = 1;
    public const uint EIO = 5;
    public const uint ENOMEM = 12;
    public const uint EINVAL = 22;
    public const uint ENOSPC = 28;
    public const uint EOVERFLOW = 75;
    public const uint ENOTSUP = 95;
    public const uint ESHUTDOWN = 108;

    public const int RequestHeaderSize = 28;
    public const int SimpleReplySize = 16;
    public const int ChunkHeaderSize = 20;
    public const int DefaultMaxPayload = 32 * 1024 * 1024;

    /// <summary>"4e 42 44 ..." (whitespace ignored) → bytes; for verbatim wire dumps.</summary>
    public static byte[] Hex(string text)
    {
        var sb = new StringBuilder(text.Length);
        foreach (var c in text)
        {
            if (!char.IsWhiteSpace(c) && c != '|')
                sb.Append(c);
        }
        return Convert.FromHexString(sb.ToString());
    }

    public static string ToHex(ReadOnlySpan<byte> bytes)
    {
        var sb = new StringBuilder(bytes.Length * 3);
        foreach (var b in bytes)
        {
            if (sb.Length > 0)
                sb.Append(' ');
            sb.Append(b.ToString("x2", CultureInfo.InvariantCulture));
        }
        return sb.ToString();
    }

    public static ushort U16(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt16BigEndian(b[at..]);
    public static uint U32(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt32BigEndian(b[at..]);
    public static ulong U64(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt64BigEndian(b[at..]);
}

/// <summary>Big-endian byte builder for server messages.</summary>
public sealed class WireBuilder
{
    private readonly ArrayBufferWriter<byte> _buffer = new();

    public int Length => _buffer.WrittenCount;

    public WireBuilder U8(byte value)
    {
        _buffer.GetSpan(1)[0] = value;
        _buffer.Advance(1);
        return this;
    }

    public WireBuilder U16(ushort value)
    {
        BinaryPrimitives.WriteUInt16BigEndian(_buffer.GetSpan(2), value);
        _buffer.Advance(2);
        return this;
    }

    public WireBuilder U32(uint value)
    {
        BinaryPrimitives.WriteUInt32BigEndian(_buffer.GetSpan(4), value);
        _buffer.Advance(4);
        return this;
    }

    public WireBuilder U64(ulong value)
    {
        BinaryPrimitives.WriteUInt64BigEndian(_buffer.GetSpan(8), value);
        _buffer.Advance(8);
        return this;
    }

    public WireBuilder Bytes(ReadOnlySpan<byte> value)
    {
        _buffer.Write(value);
        return this;
    }

    public WireBuilder Zeroes(int count)
    {
        _buffer.GetSpan(count)[..count].Clear();
        _buffer.Advance(count);
        return this;
    }

    public WireBuilder Utf8(string value) => Bytes(Encoding.UTF8.GetBytes(value));

    public byte[] ToArray() => _buffer.WrittenSpan.ToArray();

    // Ready-made messages.

    public static byte[] SimpleReply(ulong cookie, uint error, ReadOnlySpan<byte> data = default)
        => new WireBuilder().U32(Wire.SimpleReplyMagic).U32(error).U64(cookie).Bytes(data).ToArray();

    public static byte[] Chunk(ushort flags, ushort type, ulong cookie, ReadOnlySpan<byte> payload)
        => new WireBuilder().U32(Wire.StructuredReplyMagic).U16(flags).U16(type).U64(cookie).U32((uint)payload.Length).Bytes(payload).ToArray();

    public static byte[] ChunkHeader(ushort flags, ushort type, ulong cookie, uint length)
        => new WireBuilder().U32(Wire.StructuredReplyMagic).U16(flags).U16(type).U64(cookie).U32(length).ToArray();

    public static byte[] DataChunk(ulong cookie, ulong offset, ReadOnlySpan<byte> data, bool done)
        => Chunk(done ? Wire.ReplyFlagDone : (ushort)0, Wire.ChunkOffsetData, cookie, new WireBuilder().U64(offset).Bytes(data).ToArray());

    public static byte[] HoleChunk(ulong cookie, ulong offset, uint size, bool done)
        => Chunk(done ? Wire.ReplyFlagDone : (ushort)0, Wire.ChunkOffsetHole, cookie, new WireBuilder().U64(offset).U32(size).ToArray());

    public static byte[] ErrorChunk(ulong cookie, uint error, string message, bool done, ulong? offset = null, ushort? type = null)
    {
        var msg = Encoding.UTF8.GetBytes(message);
        var payload = new WireBuilder().U32(error).U16((ushort)msg.Length).Bytes(msg);
        if (offset is { } o)
            payload.U64(o);
        return Chunk(done ? Wire.ReplyFlagDone : (ushort)0, type ?? (offset is null ? Wire.ChunkError : Wire.ChunkErrorOffset), cookie, payload.ToArray());
    }

    public static byte[] BlockStatusChunk(ulong cookie, uint contextId, IEnumerable<(uint Length, uint Flags)> extents, bool done)
    {
        var payload = new WireBuilder().U32(contextId);
        foreach (var (length, flags) in extents)
            payload.U32(length).U32(flags);
        return Chunk(done ? Wire.ReplyFlagDone : (ushort)0, Wire.ChunkBlockStatus, cookie, payload.ToArray());
    }

    public static byte[] NoneChunk(ulong cookie)
        => Chunk(Wire.ReplyFlagDone, Wire.ChunkNone, cookie, default);

    public static byte[] OptionReply(uint option, uint type, ReadOnlySpan<byte> data = default)
        => new WireBuilder().U64(Wire.OptReplyMagic).U32(option).U32(type).U32((uint)data.Length).Bytes(data).ToArray();

    public static byte[] Greeting(ushort flags, ulong magic = Wire.NbdMagic, ulong second = Wire.IHaveOpt)
        => new WireBuilder().U64(magic).U64(second).U16(flags).ToArray();
}
