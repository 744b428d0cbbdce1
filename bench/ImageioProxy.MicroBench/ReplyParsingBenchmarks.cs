using System.Buffers.Binary;
using BenchmarkDotNet.Attributes;
using NbdClient;
using NbdClient.Protocol;

namespace ImageioProxy.MicroBench;

/// <summary>The reader loop's per-reply work and the writer loop's per-request header: once per NBD
/// request, so a 2 GiB upload in 1 MiB chunks does each 2048 times, and 4 KiB requests (S7) far more.</summary>
[MemoryDiagnoser]
public class ReplyParsingBenchmarks
{
    private readonly byte[] _simple = new byte[16];
    private readonly byte[] _structured = new byte[20];
    private readonly byte[] _header = new byte[28];

    [GlobalSetup]
    public void Setup()
    {
        BinaryPrimitives.WriteUInt32BigEndian(_simple, 0x67446698); // NBD_SIMPLE_REPLY_MAGIC
        BinaryPrimitives.WriteUInt64BigEndian(_simple.AsSpan(8), 42);
        BinaryPrimitives.WriteUInt32BigEndian(_structured, 0x668e33ef); // NBD_STRUCTURED_REPLY_MAGIC
        BinaryPrimitives.WriteUInt16BigEndian(_structured.AsSpan(4), 1); // DONE
        BinaryPrimitives.WriteUInt16BigEndian(_structured.AsSpan(6), 1); // OFFSET_DATA
        BinaryPrimitives.WriteUInt64BigEndian(_structured.AsSpan(8), 42);
        BinaryPrimitives.WriteUInt32BigEndian(_structured.AsSpan(16), (1 << 20) + 8);
    }

    [Benchmark]
    public ulong ParseSimpleReply() =>
        NbdWire.TryReadReplyHeader(_simple, out var header) == NbdWire.ReplyParse.Ok ? header.Cookie : 0;

    [Benchmark]
    public ulong ParseStructuredReply() =>
        NbdWire.TryReadReplyHeader(_structured, out var header) == NbdWire.ReplyParse.Ok ? header.Cookie + header.Length : 0;

    [Benchmark]
    public byte WriteRequestHeader()
    {
        NbdWire.WriteRequestHeader(_header, NbdCommandFlags.None, NbdCommand.Write, 42, 1 << 30, 1 << 20);
        return _header[27];
    }
}
