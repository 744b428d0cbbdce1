using System.Buffers.Binary;
using System.Text;

namespace NbdClient.Protocol;

/// <summary>Pure, span-based encoders and decoders of NBD messages. No I/O here, so every byte layout
/// can be unit-tested (layouts: nbd-client-spec.md §3 and §4).</summary>
internal static class NbdWire
{
    public const int OptionHeaderSize = 16;
    public const int OptionReplyHeaderSize = 20;
    public const int GreetingSize = 18;

    // C: option (16+n)   0 u64 IHAVEOPT | 8 u32 option | 12 u32 length n | 16 data[n]
    public static void WriteOptionHeader(Span<byte> destination, NbdOption option, int dataLength)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination, NbdMagic.IHaveOpt);
        BinaryPrimitives.WriteUInt32BigEndian(destination[8..], (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(destination[12..], (uint)dataLength);
    }

    /// <summary>Parsed header of an option reply.</summary>
    public readonly record struct OptionReplyHeader(NbdOption Option, NbdOptionReplyType Type, uint Length)
    {
        public bool IsError => ((uint)Type & 0x80000000) != 0;
    }

    // S: opt reply (20+n) 0 u64 magic | 8 u32 option | 12 u32 reply type | 16 u32 length n
    public static bool TryReadOptionReplyHeader(ReadOnlySpan<byte> source, out OptionReplyHeader header)
    {
        header = default;
        if (BinaryPrimitives.ReadUInt64BigEndian(source) != NbdMagic.OptionReply)
            return false;
        header = new OptionReplyHeader(
            (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(source[8..]),
            (NbdOptionReplyType)BinaryPrimitives.ReadUInt32BigEndian(source[12..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[16..]));
        return true;
    }

    /// <summary>Payload of INFO and GO: u32 name length | name | u16 n | n × u16 info type.</summary>
    public static byte[] EncodeInfoRequest(string exportName, ReadOnlySpan<NbdInfoType> infos)
    {
        var name = Encoding.UTF8.GetBytes(exportName);
        var data = new byte[4 + name.Length + 2 + (2 * infos.Length)];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)name.Length);
        name.CopyTo(data.AsSpan(4));
        var at = 4 + name.Length;
        BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(at), (ushort)infos.Length);
        at += 2;
        foreach (var info in infos)
        {
            BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(at), (ushort)info);
            at += 2;
        }
        return data;
    }

    /// <summary>Payload of LIST/SET_META_CONTEXT: u32 name length | name | u32 n | n × (u32 length, query).</summary>
    public static byte[] EncodeMetaContextRequest(string exportName, IReadOnlyList<string> queries)
    {
        var name = Encoding.UTF8.GetBytes(exportName);
        var encoded = queries.Select(q => Encoding.UTF8.GetBytes(q)).ToArray();
        var data = new byte[4 + name.Length + 4 + encoded.Sum(q => 4 + q.Length)];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)name.Length);
        name.CopyTo(data.AsSpan(4));
        var at = 4 + name.Length;
        BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(at), (uint)encoded.Length);
        at += 4;
        foreach (var query in encoded)
        {
            BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(at), (uint)query.Length);
            query.CopyTo(data.AsSpan(at + 4));
            at += 4 + query.Length;
        }
        return data;
    }

    // compact request (28+n): 0 u32 magic | 4 u16 flags | 6 u16 type | 8 u64 cookie | 16 u64 offset | 24 u32 length
    public static void WriteRequestHeader(Span<byte> destination, NbdCommandFlags flags, NbdCommand command, ulong cookie, ulong offset, uint length)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdMagic.Request);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], (ushort)flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], (ushort)command);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], cookie);
        BinaryPrimitives.WriteUInt64BigEndian(destination[16..], offset);
        BinaryPrimitives.WriteUInt32BigEndian(destination[24..], length);
    }

    /// <summary>The first 16 bytes of any reply: simple replies are complete at 16 bytes, structured
    /// chunks need 4 more (the payload length). The cookie is at offset 8 in both.</summary>
    public readonly record struct ReplyHeader(bool Structured, uint Error, ushort Flags, NbdReplyChunkType Type, ulong Cookie, uint Length)
    {
        public bool IsDone => !Structured || (Flags & NbdReplyFlags.Done) != 0;
        public int Size => Structured ? NbdLimits.StructuredReplyHeaderSize : NbdLimits.SimpleReplySize;
    }

    public enum ReplyParse
    {
        /// <summary>A header was parsed.</summary>
        Ok,
        /// <summary>More bytes are needed.</summary>
        NeedMore,
        /// <summary>Not a reply magic: the stream lost sync.</summary>
        BadMagic,
    }

    /// <summary>Parses a reply header from the start of <paramref name="source"/>.</summary>
    public static ReplyParse TryReadReplyHeader(ReadOnlySpan<byte> source, out ReplyHeader header)
    {
        header = default;
        if (source.Length < 4)
            return ReplyParse.NeedMore;
        var magic = BinaryPrimitives.ReadUInt32BigEndian(source);
        if (magic == NbdMagic.SimpleReply)
        {
            if (source.Length < NbdLimits.SimpleReplySize)
                return ReplyParse.NeedMore;
            header = new ReplyHeader(false, BinaryPrimitives.ReadUInt32BigEndian(source[4..]), 0, NbdReplyChunkType.None,
                BinaryPrimitives.ReadUInt64BigEndian(source[8..]), 0);
            return ReplyParse.Ok;
        }
        if (magic == NbdMagic.StructuredReply)
        {
            if (source.Length < NbdLimits.StructuredReplyHeaderSize)
                return ReplyParse.NeedMore;
            header = new ReplyHeader(true, 0,
                BinaryPrimitives.ReadUInt16BigEndian(source[4..]),
                (NbdReplyChunkType)BinaryPrimitives.ReadUInt16BigEndian(source[6..]),
                BinaryPrimitives.ReadUInt64BigEndian(source[8..]),
                BinaryPrimitives.ReadUInt32BigEndian(source[16..]));
            return ReplyParse.Ok;
        }
        return ReplyParse.BadMagic;
    }

    /// <summary>Parses a BLOCK_STATUS chunk payload: u32 context id, n × (u32 length, u32 flags), n ≥ 1.
    /// Extents are clipped to [requestOffset, requestEnd); zero-length extents are a protocol error.</summary>
    public static bool TryReadBlockStatus(ReadOnlySpan<byte> payload, long requestOffset, long requestEnd, List<NbdExtent> extents, out uint contextId, out string? error)
    {
        contextId = 0;
        error = null;
        if (payload.Length < 12 || (payload.Length - 4) % 8 != 0)
        {
            error = $"block status chunk has invalid length {payload.Length}";
            return false;
        }
        contextId = BinaryPrimitives.ReadUInt32BigEndian(payload);
        var at = requestOffset;
        for (var i = 4; i < payload.Length && at < requestEnd; i += 8)
        {
            var length = BinaryPrimitives.ReadUInt32BigEndian(payload[i..]);
            var flags = BinaryPrimitives.ReadUInt32BigEndian(payload[(i + 4)..]);
            if (length == 0)
            {
                error = "block status extent of length 0";
                return false;
            }
            // The last extent may overshoot the request: clip it (nbdcopy does the same).
            var clipped = Math.Min(length, requestEnd - at);
            extents.Add(new NbdExtent(at, clipped, flags));
            at += clipped;
        }
        return true;
    }

    /// <summary>Parses an ERROR / ERROR_OFFSET chunk payload: u32 error, u16 message length, message[, u64 offset].</summary>
    public static bool TryReadErrorChunk(ReadOnlySpan<byte> payload, bool hasOffset, out uint error, out string message)
    {
        error = 0;
        message = "";
        if (payload.Length < 6)
            return false;
        error = BinaryPrimitives.ReadUInt32BigEndian(payload);
        int messageLength = BinaryPrimitives.ReadUInt16BigEndian(payload[4..]);
        if (messageLength > payload.Length - 6 || (hasOffset && payload.Length < 6 + messageLength + 8))
            return false;
        message = Encoding.UTF8.GetString(payload.Slice(6, messageLength));
        return true;
    }
}
