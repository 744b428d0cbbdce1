using System.Net.Sockets;
using NbdClient.Protocol;
using NbdClient.Tests.Fakes;

namespace NbdClient.Tests;

/// <summary>Misbehaving servers during the handshake (nbd-fault-injection.md §12, §13, §15;
/// nbd-client-spec.md §3): the connect fails once, typed, in the Handshake phase, without a hang.</summary>
public sealed class NbdHandshakeFaultTests : FakeServerTestBase
{
    [Fact]
    public async Task CloseRightAfterAccept_FailsWithConnectionClosed()
    {
        Server.OnAccept = s => s.CloseAsync();
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().Be(NbdConnectionFailure.ConnectionClosed, ex.Message);
    }

    [Fact]
    public async Task AbortRightAfterAccept_FailsTyped()
    {
        Server.OnAccept = s =>
        {
            s.Abort();
            return Task.CompletedTask;
        };
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().BeOneOf([NbdConnectionFailure.ConnectionClosed, NbdConnectionFailure.IOError], ex.Message);
    }

    [Fact]
    public async Task BadGreetingMagic_FailsWithProtocolError_AndHangsUp()
    {
        Server.OnAccept = async s =>
        {
            await s.SendGreetingAsync(3, magic: 0x1122334455667788);
            await s.HangAsync(); // returns when the client closes its socket
        };
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().Be(NbdConnectionFailure.ProtocolError, ex.Message);
        var session = await Server.SessionAsync();
        await Bounded(session.Ended, "client closing its socket after a bad magic");
    }

    [Fact]
    public async Task BadSecondMagic_FailsWithProtocolError()
    {
        Server.OnAccept = async s =>
        {
            await s.SendGreetingAsync(3, second: 0x0102030405060708);
            await s.HangAsync();
        };
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().Be(NbdConnectionFailure.ProtocolError, ex.Message);
    }

    [Fact]
    public async Task OptionErrorThenClose_FailsInHandshake()
    {
        // fakesrv.py opt-error-close: first option gets ERR_UNKNOWN "go away", then the server hangs up.
        Server.OnOption = async (s, o) =>
        {
            await s.SendOptionErrorAsync(o.Code, Wire.RepErrUnknown, "go away");
            await s.CloseAsync();
            return true;
        };
        var ex = await ConnectShouldFailAsync();
        // The error was for an option the client can live without (STRUCTURED_REPLY); the connection then
        // ends with an EOF. Either report is defensible; it must be one of these, typed, in the handshake.
        ex.Reason.Should().BeOneOf([NbdConnectionFailure.ConnectionClosed, NbdConnectionFailure.ExportNotFound], ex.Message);
    }

    [Fact]
    public async Task NoFixedNewstyle_UsesExportNameOnly_AndConsumesThe124BytePad()
    {
        Server.HandshakeFlags = 0;
        var data = Pattern(8192, 1);
        Server.Disk.Write(4096, data);
        var conn = await ConnectAsync();

        var session = await Server.SessionAsync();
        session.ClientFlags.Should().Be(0u, "cflags = gflags & 3");
        session.Options.Select(o => o.Code).Should().Equal([Wire.OptExportName], "only EXPORT_NAME works without FIXED_NEWSTYLE");
        session.Options[0].Data.Should().BeEmpty("the default export");
        conn.Export.Size.Should().Be(1024 * 1024);
        conn.Export.StructuredReplies.Should().BeFalse();

        // If the pad was not consumed, this reply would be misparsed.
        var buffer = new byte[8192];
        await Bounded(conn.ReadAsync(4096, buffer).AsTask(), "read");
        buffer.Should().Equal(data);
        session.Violations.Should().BeEmpty();
    }

    [Fact]
    public async Task NoFixedNewstyle_WithNoZeroes_NoPad()
    {
        Server.HandshakeFlags = Wire.GFlagNoZeroes;
        var data = Pattern(4096, 2);
        Server.Disk.Write(0, data);
        var conn = await ConnectAsync();

        var session = await Server.SessionAsync();
        session.ClientFlags.Should().Be(Wire.GFlagNoZeroes);
        var buffer = new byte[4096];
        await Bounded(conn.ReadAsync(0, buffer).AsTask(), "read");
        buffer.Should().Equal(data);
        session.Violations.Should().BeEmpty();
    }

    [Fact]
    public async Task EflagsZero_FailsWithProtocolError()
    {
        Server.TransmissionFlags = 0;
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().Be(NbdConnectionFailure.ProtocolError, ex.Message);
    }

    [Fact]
    public async Task TlsOnlyServer_FailsWithTlsRequired_AndAborts()
    {
        // nbdkit --tls=require (FORCEDTLS): every option but ABORT gets ERR_TLS_REQD.
        Server.OnOption = async (s, o) =>
        {
            if (o.Code == Wire.OptAbort)
            {
                await s.SendOptionReplyAsync(o.Code, Wire.RepAck);
                await s.CloseAsync();
                return true;
            }
            await s.SendOptionErrorAsync(o.Code, Wire.RepErrTlsReqd);
            return true;
        };
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().Be(NbdConnectionFailure.TlsRequired, ex.Message);
        var session = await Server.SessionAsync();
        await Bounded(session.Ended, "session end");
        session.Options.Should().NotBeEmpty();
        session.Options[^1].Code.Should().Be(Wire.OptAbort, "the client must soft-disconnect with NBD_OPT_ABORT");
    }

    [Fact]
    public async Task ErrShutdownInHandshake_FailsWithServerShutdown_AndAborts()
    {
        Server.OnOption = async (s, o) =>
        {
            if (o.Code == Wire.OptAbort)
            {
                await s.SendOptionReplyAsync(o.Code, Wire.RepAck);
                await s.CloseAsync();
                return true;
            }
            await s.SendOptionErrorAsync(o.Code, Wire.RepErrShutdown, "server is going down");
            return true;
        };
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().Be(NbdConnectionFailure.ServerShutdown, ex.Message);
        var session = await Server.SessionAsync();
        await Bounded(session.Ended, "session end");
        session.Options.Should().HaveCount(2, "one option, then the soft disconnect (spec: MUST soft-disconnect on ERR_SHUTDOWN)");
        session.Options[^1].Code.Should().Be(Wire.OptAbort);
    }

    [Fact]
    public async Task ErrShutdownThenImmediateClose_FailsWithServerShutdown()
    {
        // The server may close without waiting for ABORT: the client must tolerate that (spec §3.1).
        Server.OnOption = async (s, o) =>
        {
            await s.SendOptionErrorAsync(o.Code, Wire.RepErrShutdown, "bye");
            await s.CloseAsync();
            return true;
        };
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().Be(NbdConnectionFailure.ServerShutdown, ex.Message);
    }

    [Fact]
    public async Task GoForUnknownExport_FailsWithExportNotFound_AndAborts()
    {
        Server.ExportName = "disk1";
        var endpoint = new NbdEndpoint(new UnixDomainSocketEndPoint(Server.SocketPath), "no-such-export");
        var ex = await ConnectShouldFailAsync(endpoint: endpoint);
        ex.Reason.Should().Be(NbdConnectionFailure.ExportNotFound, ex.Message);
        var session = await Server.SessionAsync();
        await Bounded(session.Ended, "session end");
        session.Options.Should().Contain(o => o.Code == Wire.OptGo);
        session.Options[^1].Code.Should().Be(Wire.OptAbort, "ABORT after a failed GO (soft disconnect)");
    }

    [Theory]
    [InlineData(Wire.RepErrPolicy)]
    [InlineData(Wire.RepErrPlatform)]
    public async Task GoRefused_FailsWithRefused(uint error)
    {
        Server.OnOption = async (s, o) =>
        {
            if (o.Code != Wire.OptGo)
                return false;
            await s.SendOptionErrorAsync(o.Code, error, "not for you");
            return true;
        };
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().Be(NbdConnectionFailure.Refused, ex.Message);
        var session = await Server.SessionAsync();
        await Bounded(session.Ended, "session end");
        session.Options[^1].Code.Should().Be(Wire.OptAbort);
    }

    [Fact]
    public async Task SilentServer_FailsWithHandshakeTimeout()
    {
        // qemu-nbd --shared=1 accepts a second client and then says nothing.
        Server.OnAccept = s => s.HangAsync();
        var ex = await ConnectShouldFailAsync(Patient with { HandshakeTimeout = TimeSpan.FromMilliseconds(300) });
        ex.Reason.Should().Be(NbdConnectionFailure.HandshakeTimeout, ex.Message);
        var session = await Server.SessionAsync();
        await Bounded(session.Ended, "client closing its socket after the handshake timeout");
    }

    [Fact]
    public async Task OptionNeverAnswered_FailsWithHandshakeTimeout()
    {
        Server.OnOption = async (s, o) =>
        {
            await s.HangAsync();
            return true;
        };
        var ex = await ConnectShouldFailAsync(Patient with { HandshakeTimeout = TimeSpan.FromMilliseconds(300) });
        ex.Reason.Should().Be(NbdConnectionFailure.HandshakeTimeout, ex.Message);
    }

    [Fact]
    public async Task GoUnsupported_FallsBackToExportName()
    {
        // Spec §3 step 8: ERR_UNSUP to GO ⇒ old server ⇒ NBD_OPT_EXPORT_NAME.
        Server.OnOption = async (s, o) =>
        {
            if (o.Code is not (Wire.OptGo or Wire.OptInfo))
                return false;
            await s.SendOptionErrorAsync(o.Code, Wire.RepErrUnsup);
            return true;
        };
        var data = Pattern(4096, 3);
        Server.Disk.Write(0, data);
        var conn = await ConnectAsync();
        var session = await Server.SessionAsync();
        session.Options[^1].Code.Should().Be(Wire.OptExportName);
        conn.Export.Size.Should().Be(1024 * 1024);
        var buffer = new byte[4096];
        await Bounded(conn.ReadAsync(0, buffer).AsTask(), "read");
        buffer.Should().Equal(data);
        session.Violations.Should().BeEmpty();
    }

    [Fact]
    public async Task InfoExportWithWrongLength_FailsWithProtocolError()
    {
        Server.OnOption = async (s, o) =>
        {
            if (o.Code != Wire.OptGo)
                return false;
            // INFO_EXPORT must be exactly 12 bytes; send 13.
            await s.SendOptionReplyAsync(o.Code, Wire.RepInfo, new WireBuilder().U16(Wire.InfoExport).U64(1 << 20).U16(0x0d6d).U8(0).ToArray());
            await s.SendOptionReplyAsync(o.Code, Wire.RepAck);
            s.InTransmission = true;
            return true;
        };
        Server.Transmission = s => s.HangAsync();
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().Be(NbdConnectionFailure.ProtocolError, ex.Message);
    }

    [Fact]
    public async Task InfoBlockSizeWithWrongLength_FailsWithProtocolError()
    {
        Server.OnOption = async (s, o) =>
        {
            if (o.Code != Wire.OptGo)
                return false;
            await s.SendOptionReplyAsync(o.Code, Wire.RepInfo, new WireBuilder().U16(Wire.InfoBlockSize).U32(1).U32(4096).ToArray());
            await s.SendInfoExportAsync(o.Code, 1 << 20, 0x0d6d);
            await s.SendOptionReplyAsync(o.Code, Wire.RepAck);
            s.InTransmission = true;
            return true;
        };
        Server.Transmission = s => s.HangAsync();
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().Be(NbdConnectionFailure.ProtocolError, ex.Message);
    }

    [Fact]
    public async Task GoAckWithoutInfoExport_FailsWithProtocolError()
    {
        Server.OnOption = async (s, o) =>
        {
            if (o.Code != Wire.OptGo)
                return false;
            await s.SendOptionReplyAsync(o.Code, Wire.RepAck);
            s.InTransmission = true;
            return true;
        };
        Server.Transmission = s => s.HangAsync();
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().Be(NbdConnectionFailure.ProtocolError, ex.Message);
    }

    [Fact]
    public async Task UnknownInfoType_IsIgnored()
    {
        Server.OnOption = async (s, o) =>
        {
            if (o.Code != Wire.OptGo)
                return false;
            await s.SendOptionReplyAsync(o.Code, Wire.RepInfo, new WireBuilder().U16(0x4242).Utf8("whatever").ToArray());
            await s.SendOptionReplyAsync(o.Code, Wire.RepInfo, new WireBuilder().U16(Wire.InfoDescription).Utf8("a disk").ToArray());
            await s.SendInfoExportAsync(o.Code, 2 << 20, 0x0d6d);
            await s.SendOptionReplyAsync(o.Code, Wire.RepAck);
            s.InTransmission = true;
            return true;
        };
        var conn = await ConnectAsync();
        conn.Export.Size.Should().Be(2 << 20);
    }

    [Fact]
    public async Task OptionReplyEchoingAnotherOption_FailsWithProtocolError()
    {
        Server.OnOption = async (s, o) =>
        {
            await s.SendOptionReplyAsync(o.Code + 1, Wire.RepAck);
            await s.HangAsync();
            return true;
        };
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().Be(NbdConnectionFailure.ProtocolError, ex.Message);
    }

    [Fact]
    public async Task OptionReplyWithBadMagic_FailsWithProtocolError()
    {
        Server.OnOption = async (s, o) =>
        {
            await s.SendAsync(new WireBuilder().U64(0x0003e889045565aa).U32(o.Code).U32(Wire.RepAck).U32(0).ToArray());
            await s.HangAsync();
            return true;
        };
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().Be(NbdConnectionFailure.ProtocolError, ex.Message);
    }

    [Fact]
    public async Task OptionReplyWithHugeLength_FailsWithoutBufferingIt()
    {
        Server.OnOption = async (s, o) =>
        {
            // An INFO claiming 0xffffff00 bytes; nothing follows. The client must not wait for (or allocate) it.
            await s.SendAsync(new WireBuilder().U64(Wire.OptReplyMagic).U32(o.Code).U32(Wire.RepInfo).U32(0xffffff00).ToArray());
            await s.HangAsync();
            return true;
        };
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().Be(NbdConnectionFailure.ProtocolError, ex.Message);
    }

    [Fact]
    public async Task EofInsideAnOptionReply_FailsInHandshake()
    {
        Server.OnOption = async (s, o) =>
        {
            await s.SendAsync(WireBuilder.OptionReply(o.Code, Wire.RepAck).AsMemory(0, 10));
            await s.CloseAsync();
            return true;
        };
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().BeOneOf([NbdConnectionFailure.ProtocolError, NbdConnectionFailure.ConnectionClosed], ex.Message);
    }

    [Theory]
    [InlineData((ushort)0x0001, 0x1u)]
    [InlineData((ushort)0x0003, 0x3u)]
    [InlineData((ushort)0xffff, 0x3u)]
    public async Task ClientFlags_AreServerFlagsAnd3(ushort serverFlags, uint expected)
    {
        Server.HandshakeFlags = serverFlags;
        await ConnectAsync();
        var session = await Server.SessionAsync();
        session.ClientFlags.Should().Be(expected);
        session.Violations.Should().BeEmpty();
    }

    [Fact]
    public async Task StructuredRepliesRefused_NoMetaContextOption_SimpleRepliesWork_BlockStatusRefusedLocally()
    {
        Server.StructuredReplies = false;
        var data = Pattern(4096, 4);
        Server.Disk.Write(8192, data);
        var conn = await ConnectAsync();
        var session = await Server.SessionAsync();

        session.Options.Select(o => o.Code).Should().NotContain(Wire.OptSetMetaContext, "SET_META_CONTEXT needs structured replies");
        session.Violations.Should().BeEmpty();
        conn.Export.StructuredReplies.Should().BeFalse();
        conn.Export.CanBlockStatus.Should().BeFalse();

        var buffer = new byte[4096];
        await Bounded(conn.ReadAsync(8192, buffer).AsTask(), "read");
        buffer.Should().Equal(data);

        var extents = await OutcomeAsync(conn.GetExtentsAsync(0, 4096).AsTask(), "GetExtentsAsync");
        extents.Should().BeAssignableTo<NbdException>("block status is impossible without structured replies");
        session.Requests.Should().NotContain(r => r.Type == Wire.CmdBlockStatus);
    }

    [Fact]
    public async Task MetaContextOnlyAfterStructuredReplyAck()
    {
        await ConnectAsync();
        var session = await Server.SessionAsync();
        var codes = session.Options.Select(o => o.Code).ToList();
        codes.Should().Contain(Wire.OptStructuredReply);
        var sr = codes.IndexOf(Wire.OptStructuredReply);
        var set = codes.IndexOf(Wire.OptSetMetaContext);
        set.Should().BeGreaterThan(sr);
        codes[^1].Should().Be(Wire.OptGo);
        session.Violations.Should().BeEmpty();
    }

    [Fact]
    public async Task OldStyleServer_IsRejected()
    {
        // nbdkit -o (nbd-fault-injection.md §15): NBDMAGIC, cliserv magic, size, 32-bit flags, 124 zeroes.
        Server.OnAccept = async s =>
        {
            await s.SendAsync(new WireBuilder().U64(Wire.NbdMagic).U64(Wire.OldStyleMagic).U64(1 << 20).U32(0x0d6d).Zeroes(124).ToArray());
            await s.HangAsync();
        };
        var ex = await ConnectShouldFailAsync();
        ex.Reason.Should().BeOneOf([NbdConnectionFailure.ProtocolError, NbdConnectionFailure.Refused], ex.Message);
    }

    [Fact]
    public async Task MetaContextIdZero_IsAValidId()
    {
        // qemu-nbd uses id 0 for base:allocation: never treat 0 as "unset".
        Server.MetaContexts["base:allocation"] = 0;
        var conn = await ConnectAsync();
        conn.Export.MetaContexts.Should().ContainKey(NbdMetaContexts.BaseAllocation).WhoseValue.Should().Be(0u);
        conn.Export.CanBlockStatus.Should().BeTrue();
    }
}
