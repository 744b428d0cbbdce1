using NbdClient.Protocol;

namespace NbdClient.Tests.Protocol;

/// <summary>Byte-exact checks of the codec against wire dumps in nbd-peers.md §5 (libnbd ⇄ qemu-nbd 7.2).</summary>
public class NbdWireTests
{
    private static byte[] Hex(string hex) => Convert.FromHexString(hex.Replace(" ", "", StringComparison.Ordinal));

    [Fact]
    public void RequestHeader_MatchesLibnbdReadOnTheWire()
    {
        // "> 25 60 95 13 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 0f fe 00 00 00 04 00" (READ cookie 1, 0xffe00, 0x400)
        var header = new byte[28];
        NbdWire.WriteRequestHeader(header, NbdCommandFlags.None, NbdCommand.Read, 1, 0xffe00, 0x400);
        header.Should().Equal(Hex("25609513 0000 0000 0000000000000001 00000000000ffe00 00000400"));
    }

    [Fact]
    public void RequestHeader_EncodesFlagsAndCommand()
    {
        var header = new byte[28];
        NbdWire.WriteRequestHeader(header, NbdCommandFlags.NoHole | NbdCommandFlags.Fua, NbdCommand.WriteZeroes, 3, 0x800000, 0x10000);
        header.Should().Equal(Hex("25609513 0003 0006 0000000000000003 0000000000800000 00010000"));
    }

    [Fact]
    public void SimpleReply_IsParsedFromSixteenBytes()
    {
        NbdWire.TryReadReplyHeader(Hex("67446698 0000001c 0000000000000001"), out var header).Should().Be(NbdWire.ReplyParse.Ok);
        header.Structured.Should().BeFalse();
        header.Error.Should().Be(28u);
        header.Cookie.Should().Be(1ul);
        header.IsDone.Should().BeTrue();
        header.Size.Should().Be(16);
    }

    [Fact]
    public void StructuredChunk_NeedsTwentyBytes()
    {
        var chunk = Hex("668e33ef 0001 0001 0000000000000001 00000208");
        NbdWire.TryReadReplyHeader(chunk.AsSpan(0, 16), out _).Should().Be(NbdWire.ReplyParse.NeedMore);
        NbdWire.TryReadReplyHeader(chunk, out var header).Should().Be(NbdWire.ReplyParse.Ok);
        header.Structured.Should().BeTrue();
        header.Type.Should().Be(NbdReplyChunkType.OffsetData);
        header.IsDone.Should().BeTrue();
        header.Length.Should().Be(0x208u);
    }

    [Theory]
    [InlineData("00000000 00000000 0000000000000001")]
    [InlineData("12560953 00000000 0000000000000001")] // historic magics are never valid
    [InlineData("96744668 00000000 0000000000000001")]
    public void UnknownMagic_IsReported(string hex)
    {
        NbdWire.TryReadReplyHeader(Hex(hex), out _).Should().Be(NbdWire.ReplyParse.BadMagic);
    }

    [Fact]
    public void BlockStatus_FromQemuTrace_IsClippedToTheRequest()
    {
        // Payload of the BLOCK_STATUS chunk in nbd-peers.md §5.1: context 0, four extents, request 0..8 MiB.
        var payload = Hex("00000000 00001000 00000000 000ff000 00000003 00200000 00000000 00500000 00000003");
        var extents = new List<NbdExtent>();
        NbdWire.TryReadBlockStatus(payload, 0, 0x800000, extents, out var context, out var error).Should().BeTrue(error);
        context.Should().Be(0u);
        extents.Should().Equal(
            new NbdExtent(0, 0x1000, 0),
            new NbdExtent(0x1000, 0xff000, 3),
            new NbdExtent(0x100000, 0x200000, 0),
            new NbdExtent(0x300000, 0x500000, 3));

        extents.Clear();
        NbdWire.TryReadBlockStatus(payload, 0, 0x2000, extents, out _, out _).Should().BeTrue();
        extents.Should().Equal(new NbdExtent(0, 0x1000, 0), new NbdExtent(0x1000, 0x1000, 3));
    }

    [Theory]
    [InlineData("00000000")]                              // no extent
    [InlineData("00000000 00001000")]                     // half an extent
    [InlineData("00000000 00000000 00000000")]            // zero-length extent
    public void BlockStatus_Malformed_IsRejected(string hex)
    {
        NbdWire.TryReadBlockStatus(Hex(hex), 0, 1 << 20, [], out _, out var error).Should().BeFalse();
        error.Should().NotBeNullOrEmpty();
    }

    [Fact]
    public void ErrorChunk_FromNbdkit_IsParsed()
    {
        // nbdkit error filter: "66 8e 33 ef 00 01 80 01 ... 00 00 00 06 | 00 00 00 05 00 00" (EIO, empty message)
        NbdWire.TryReadErrorChunk(Hex("00000005 0000"), hasOffset: false, out var error, out var message).Should().BeTrue();
        error.Should().Be(5u);
        message.Should().BeEmpty();

        NbdWire.TryReadErrorChunk(Hex("0000001c 0003 616263 0000000000001000"), hasOffset: true, out error, out message).Should().BeTrue();
        error.Should().Be(28u);
        message.Should().Be("abc");

        NbdWire.TryReadErrorChunk(Hex("0000001c 0010 616263"), hasOffset: false, out _, out _).Should().BeFalse("the message length exceeds the chunk");
    }

    [Fact]
    public void MetaContextRequest_MatchesLibnbd()
    {
        // "49484156454f5054 0000000a 0000001b | 00000000 | 00000001 | 0000000f 626173653a616c6c6f636174696f6e"
        var data = NbdWire.EncodeMetaContextRequest("", ["base:allocation"]);
        data.Should().Equal(Hex("00000000 00000001 0000000f 626173653a616c6c6f636174696f6e"));
        var header = new byte[16];
        NbdWire.WriteOptionHeader(header, NbdOption.SetMetaContext, data.Length);
        header.Should().Equal(Hex("49484156454f5054 0000000a 0000001b"));
    }

    [Fact]
    public void GoRequest_MatchesLibnbd()
    {
        // "49484156454f5054 00000007 00000008 | 00000000 | 0001 | 0003"
        NbdWire.EncodeInfoRequest("", [NbdInfoType.BlockSize]).Should().Equal(Hex("00000000 0001 0003"));
    }

    [Fact]
    public void OptionReply_RequiresTheMagic()
    {
        NbdWire.TryReadOptionReplyHeader(Hex("0003e889045565a9 00000007 00000003 0000000e"), out var header).Should().BeTrue();
        header.Option.Should().Be(NbdOption.Go);
        header.Type.Should().Be(NbdOptionReplyType.Info);
        header.Length.Should().Be(14u);
        header.IsError.Should().BeFalse();

        NbdWire.TryReadOptionReplyHeader(Hex("0003e889045565a9 00000006 80000005 00000000"), out header).Should().BeTrue();
        header.IsError.Should().BeTrue();
        NbdWire.TryReadOptionReplyHeader(Hex("0003e889045565aa 00000006 80000005 00000000"), out _).Should().BeFalse();
    }
}
