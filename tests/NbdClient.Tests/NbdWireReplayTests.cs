using NbdClient.Tests.Fakes;

namespace NbdClient.Tests;

/// <summary>Replays verbatim socat dumps of real servers (nbd-peers.md §5.1: qemu-nbd 7.2;
/// nbd-fault-injection.md §13 and §15: nbdkit FORCEDTLS and --mask-handshake) byte for byte through the
/// fake server. Client bytes are compared with the dump (the cookie excepted: it is opaque and ours
/// may differ from libnbd's), and the client must produce the documented results.</summary>
public sealed class NbdWireReplayTests : FakeServerTestBase
{
    private readonly List<string> _mismatches = new();

    /// <summary>Reads as many bytes as the dump shows and compares them (bytes 8..15 = cookie skipped when asked).</summary>
    private async Task<byte[]> ExpectAsync(FakeNbdSession s, string step, string hex, bool cookie = false)
    {
        var expected = Wire.Hex(hex);
        var actual = await s.ReadExactAsync(expected.Length);
        var compareActual = (byte[])actual.Clone();
        if (cookie)
        {
            Array.Clear(compareActual, 8, 8);
            Array.Clear(expected, 8, 8);
        }
        if (!compareActual.AsSpan().SequenceEqual(expected))
        {
            lock (_mismatches)
                _mismatches.Add($"{step}:\n  expected {Wire.ToHex(expected)}\n  actual   {Wire.ToHex(actual)}");
        }
        return actual;
    }

    private static byte[] WithCookie(string hex, byte[] request)
    {
        var bytes = Wire.Hex(hex);
        request.AsSpan(8, 8).CopyTo(bytes.AsSpan(8));
        return bytes;
    }

    private void AssertNoMismatches() => _mismatches.Should().BeEmpty(string.Join("\n", _mismatches));

    [Fact]
    public async Task QemuNbd72_HandshakeReadAcrossHoleBlockStatusZeroDisc()
    {
        Server.OnAccept = async s =>
        {
            await s.SendAsync(Wire.Hex("4e 42 44 4d 41 47 49 43 49 48 41 56 45 4f 50 54 00 03"));
            await ExpectAsync(s, "client flags", "00 00 00 03");
            await ExpectAsync(s, "STRUCTURED_REPLY", "49 48 41 56 45 4f 50 54 00 00 00 08 00 00 00 00");
            await s.SendAsync(Wire.Hex("00 03 e8 89 04 55 65 a9 00 00 00 08 00 00 00 01 00 00 00 00"));
            await ExpectAsync(s, "SET_META_CONTEXT base:allocation",
                "49 48 41 56 45 4f 50 54 00 00 00 0a 00 00 00 1b 00 00 00 00 00 00 00 01 00 00 00 0f 62 61 73 65 3a 61 6c 6c 6f 63 61 74 69 6f 6e");
            await s.SendAsync(Wire.Hex(
                "00 03 e8 89 04 55 65 a9 00 00 00 0a 00 00 00 04 00 00 00 13 00 00 00 00 62 61 73 65 3a 61 6c 6c 6f 63 61 74 69 6f 6e 00 03 e8 89 04 55 65 a9 00 00 00 0a 00 00 00 01 00 00 00 00"));
            await ExpectAsync(s, "GO", "49 48 41 56 45 4f 50 54 00 00 00 07 00 00 00 08 00 00 00 00 00 01 00 03");
            await s.SendAsync(Wire.Hex("00 03 e8 89 04 55 65 a9 00 00 00 07 00 00 00 03 00 00 00 0e"));
            await s.SendAsync(Wire.Hex(
                "00 03 00 00 00 01 00 00 10 00 02 00 00 00 00 03 e8 89 04 55 65 a9 00 00 00 07 00 00 00 03 00 00 00 0c 00 00 00 00 00 00 04 00 00 00 0c ed 00 03 e8 89 04 55 65 a9 00 00 00 07 00 00 00 01 00 00 00 00"));

            var read = await ExpectAsync(s, "READ 0x400 at 0xffe00", "25 60 95 13 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 0f fe 00 00 00 04 00", cookie: true);
            await s.SendAsync(WithCookie("66 8e 33 ef 00 00 00 02 00 00 00 00 00 00 00 01 00 00 00 0c 00 00 00 00 00 0f fe 00 00 00 02 00", read));
            // The dump truncates the 540-byte DATA chunk: header + offset 0x100000 + 512 × 0xab (length 0x208).
            var data = WithCookie("66 8e 33 ef 00 01 00 01 00 00 00 00 00 00 00 01 00 00 02 08 00 00 00 00 00 10 00 00", read);
            await s.SendAsync(data.Concat(Enumerable.Repeat((byte)0xab, 512)).ToArray());

            var bs = await ExpectAsync(s, "BLOCK_STATUS 8 MiB at 0", "25 60 95 13 00 00 00 07 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 00 00 80 00 00", cookie: true);
            await s.SendAsync(WithCookie(
                "66 8e 33 ef 00 01 00 05 00 00 00 00 00 00 00 02 00 00 00 24 00 00 00 00 00 00 10 00 00 00 00 00 00 0f f0 00 00 00 00 03 00 20 00 00 00 00 00 00 00 50 00 00 00 00 00 03", bs));

            var zero = await ExpectAsync(s, "WRITE_ZEROES 64 KiB at 8 MiB", "25 60 95 13 00 00 00 06 00 00 00 00 00 00 00 03 00 00 00 00 00 80 00 00 00 01 00 00", cookie: true);
            await s.SendAsync(WithCookie("67 44 66 98 00 00 00 00 00 00 00 00 00 00 00 03", zero));

            await ExpectAsync(s, "DISC", "25 60 95 13 00 00 00 02 00 00 00 00 00 00 00 04 00 00 00 00 00 00 00 00 00 00 00 00", cookie: true);
            (await s.ReadExactOrEofAsync(1)).Should().BeNull("nothing may follow NBD_CMD_DISC");
        };

        var conn = await ConnectAsync();
        conn.Export.Size.Should().Be(0x4000000);
        ((ushort)conn.Export.Flags).Should().Be(0x0ced);
        conn.Export.MinimumBlockSize.Should().Be(1);
        conn.Export.PreferredBlockSize.Should().Be(4096);
        conn.Export.MaximumPayload.Should().Be(32 * 1024 * 1024);
        conn.Export.StructuredReplies.Should().BeTrue();
        conn.Export.MetaContexts.Should().Equal(new Dictionary<string, uint> { ["base:allocation"] = 0 });

        var buffer = new byte[1024];
        buffer.AsSpan().Fill(0x55);
        await Bounded(conn.ReadAsync(0xffe00, buffer).AsTask(), "read");
        buffer.AsSpan(0, 512).ToArray().Should().OnlyContain(b => b == 0, "the first 512 bytes are a hole");
        buffer.AsSpan(512).ToArray().Should().OnlyContain(b => b == 0xab);

        var extents = await Bounded(conn.GetExtentsAsync(0, 8 * 1024 * 1024).AsTask(), "block status");
        extents.Should().Equal(
            new NbdExtent(0, 4096, 0),
            new NbdExtent(4096, 1044480, 3),
            new NbdExtent(1048576, 2097152, 0),
            new NbdExtent(3145728, 5242880, 3));

        await Bounded(conn.WriteZeroesAsync(8 * 1024 * 1024, 65536).AsTask(), "write zeroes");
        await Bounded(conn.DisconnectAsync().AsTask(), "disconnect");
        await Bounded((await Server.SessionAsync()).Ended, "session end");
        AssertNoMismatches();
    }

    [Fact]
    public async Task NbdkitMaskHandshake0_NewstyleWithoutFixed_ExportNameAnd134ByteReply()
    {
        Server.OnAccept = async s =>
        {
            await s.SendAsync(Wire.Hex("4e 42 44 4d 41 47 49 43 49 48 41 56 45 4f 50 54 00 00"));
            await ExpectAsync(s, "client flags", "00 00 00 00");
            await ExpectAsync(s, "EXPORT_NAME \"\"", "49 48 41 56 45 4f 50 54 00 00 00 01 00 00 00 00");
            await s.SendAsync(Wire.Hex("00 00 00 00 00 10 00 00 0d 6d").Concat(new byte[124]).ToArray());
            var read = await ExpectAsync(s, "READ 8 KiB at 0", "25 60 95 13 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00 00 00 20 00", cookie: true);
            await s.SendAsync(WithCookie("67 44 66 98 00 00 00 00 00 00 00 00 00 00 00 01", read).Concat(new byte[8192]).ToArray());
            await ExpectAsync(s, "DISC", "25 60 95 13 00 00 00 02 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 00 00 00 00 00", cookie: true);
        };
        var conn = await ConnectAsync();
        conn.Export.Size.Should().Be(1 << 20);
        ((ushort)conn.Export.Flags).Should().Be(0x0d6d);
        conn.Export.StructuredReplies.Should().BeFalse();
        var buffer = new byte[8192];
        buffer.AsSpan().Fill(0xee);
        await Bounded(conn.ReadAsync(0, buffer).AsTask(), "read");
        buffer.Should().OnlyContain(b => b == 0);
        await Bounded(conn.DisconnectAsync().AsTask(), "disconnect");
        await Bounded((await Server.SessionAsync()).Ended, "session end");
        AssertNoMismatches();
    }

    [Fact]
    public async Task NbdkitMaskHandshake1_FixedNewstyleWithoutNoZeroes()
    {
        Server.OnAccept = async s =>
        {
            await s.SendAsync(Wire.Hex("4e 42 44 4d 41 47 49 43 49 48 41 56 45 4f 50 54 00 01"));
            await ExpectAsync(s, "client flags", "00 00 00 01");
            while (true)
            {
                var o = await s.ReadOptionAsync() ?? throw new EndOfStreamException("client left during the handshake");
                if (o.Code == Wire.OptStructuredReply)
                {
                    await s.SendAsync(Wire.Hex("00 03 e8 89 04 55 65 a9 00 00 00 08 00 00 00 01 00 00 00 00"));
                }
                else if (o.Code == Wire.OptSetMetaContext)
                {
                    // nbdkit's META_CONTEXT reply (from the dump's LIST answer), echoed for SET.
                    await s.SendAsync(Wire.Hex("00 03 e8 89 04 55 65 a9 00 00 00 0a 00 00 00 04 00 00 00 13 00 00 00 00 62 61 73 65 3a 61 6c 6c 6f 63 61 74 69 6f 6e 00 03 e8 89 04 55 65 a9 00 00 00 0a 00 00 00 01 00 00 00 00"));
                }
                else if (o.Code == Wire.OptGo)
                {
                    await s.SendAsync(Wire.Hex("00 03 e8 89 04 55 65 a9 00 00 00 07 00 00 00 03 00 00 00 0c"));
                    await s.SendAsync(Wire.Hex("00 00 00 00 00 00 00 10 00 00 0d ed 00 03 e8 89 04 55 65 a9 00 00 00 07 00 00 00 03 00 00 00 02 00 01 00 03 e8 89 04 55 65 a9 00 00 00 07 00 00 00 01 00 00 00 00"));
                    break;
                }
                else
                {
                    await s.SendOptionErrorAsync(o.Code, Wire.RepErrUnsup);
                }
            }
            var read = await ExpectAsync(s, "READ 8 KiB at 0", "25 60 95 13 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00 00 00 20 00", cookie: true);
            await s.SendAsync(WithCookie("66 8e 33 ef 00 01 00 01 00 00 00 00 00 00 00 01 00 00 20 08 00 00 00 00 00 00 00 00", read).Concat(new byte[8192]).ToArray());
            await ExpectAsync(s, "DISC", "25 60 95 13 00 00 00 02 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 00 00 00 00 00", cookie: true);
        };
        var conn = await ConnectAsync();
        conn.Export.Size.Should().Be(1 << 20);
        ((ushort)conn.Export.Flags).Should().Be(0x0ded);
        conn.Export.StructuredReplies.Should().BeTrue();
        conn.Export.MinimumBlockSize.Should().Be(1, "nothing advertised");
        conn.Export.MaximumPayload.Should().Be(32 * 1024 * 1024, "nothing advertised ⇒ 32 MiB");
        var buffer = new byte[8192];
        buffer.AsSpan().Fill(0xee);
        await Bounded(conn.ReadAsync(0, buffer).AsTask(), "read");
        buffer.Should().OnlyContain(b => b == 0);
        await Bounded(conn.DisconnectAsync().AsTask(), "disconnect");
        await Bounded((await Server.SessionAsync()).Ended, "session end");
        AssertNoMismatches();
    }

    [Fact]
    public async Task NbdkitForcedTls_PlaintextClientGetsTlsRequired_ThenAborts()
    {
        Server.OnAccept = async s =>
        {
            await s.SendAsync(Wire.Hex("4e 42 44 4d 41 47 49 43 49 48 41 56 45 4f 50 54 00 03"));
            await ExpectAsync(s, "client flags", "00 00 00 03");
            await ExpectAsync(s, "STRUCTURED_REPLY", "49 48 41 56 45 4f 50 54 00 00 00 08 00 00 00 00");
            await s.SendAsync(Wire.Hex("00 03 e8 89 04 55 65 a9 00 00 00 08 80 00 00 05 00 00 00 00"));
            while (true)
            {
                var o = await s.ReadOptionAsync();
                if (o is null)
                    break;
                if (o.Code == Wire.OptAbort)
                {
                    await s.SendAsync(Wire.Hex("00 03 e8 89 04 55 65 a9 00 00 00 02 00 00 00 01 00 00 00 00"));
                    break;
                }
                await s.SendOptionReplyAsync(o.Code, Wire.RepErrTlsReqd);
            }
        };
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().Be(NbdConnectionFailure.TlsRequired, ex.Message);
        var session = await Server.SessionAsync();
        await Bounded(session.Ended, "session end");
        session.Options.Should().NotBeEmpty();
        session.Options[^1].Code.Should().Be(Wire.OptAbort, "the client ends with NBD_OPT_ABORT, as libnbd does in the dump");
        AssertNoMismatches();
    }

    [Fact]
    public async Task NbdkitOldstyle_IsRejectedInTheHandshake()
    {
        Server.OnAccept = async s =>
        {
            await s.SendAsync(Wire.Hex("4e 42 44 4d 41 47 49 43 00 00 42 02 81 86 12 53 00 00 00 00 00 10 00 00 00 00 0d 6d").Concat(new byte[124]).ToArray());
            await s.HangAsync();
        };
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().BeOneOf(NbdConnectionFailure.Refused, NbdConnectionFailure.ProtocolError);
        await Bounded((await Server.SessionAsync()).Ended, "the client hanging up");
    }
}
