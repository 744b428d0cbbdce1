using NbdClient.Protocol;
using NbdClient.Tests.Fakes;

namespace NbdClient.Tests;

/// <summary>Misbehaving servers in the transmission phase (nbd-client-spec.md §4, §7, §13;
/// nbd-fault-injection.md §12). Each test pipelines a few requests first, so it also checks that a
/// connection failure fails every pending request once, typed, with writes reported as outcome-unknown.</summary>
public sealed class NbdTransmissionFaultTests : FakeServerTestBase
{
    private const long OffsetA = 0;
    private const long OffsetB = 64 * 1024;
    private const long OffsetC = 128 * 1024;
    private const int Len = 4096;

    private sealed record Pipeline(Task ReadA, Task WriteB, Task ReadC, byte[] BufferA, byte[] DataB, byte[] BufferC);

    /// <summary>READ A (0), WRITE B (64 KiB), READ C (128 KiB), 4 KiB each, all in flight at once.</summary>
    private static Pipeline Start(NbdConnection conn, bool writeFirst = false)
    {
        var bufferA = new byte[Len];
        var bufferC = new byte[Len];
        var dataB = Pattern(Len, 42);
        Task a, b, c;
        if (writeFirst)
        {
            b = conn.WriteAsync(OffsetB, dataB).AsTask();
            a = conn.ReadAsync(OffsetA, bufferA).AsTask();
        }
        else
        {
            a = conn.ReadAsync(OffsetA, bufferA).AsTask();
            b = conn.WriteAsync(OffsetB, dataB).AsTask();
        }
        c = conn.ReadAsync(OffsetC, bufferC).AsTask();
        return new Pipeline(a, b, c, bufferA, dataB, bufferC);
    }

    private static FakeRequest A(List<FakeRequest> r) => r.Single(x => x.Type == Wire.CmdRead && x.Offset == OffsetA);
    private static FakeRequest B(List<FakeRequest> r) => r.Single(x => x.Type == Wire.CmdWrite);
    private static FakeRequest C(List<FakeRequest> r) => r.Single(x => x.Type == Wire.CmdRead && x.Offset == OffsetC);

    /// <summary>The connection died: every pending request failed once, typed; later requests fail fast.</summary>
    private static async Task AssertConnectionFailedAsync(NbdConnection conn, Pipeline p, params NbdConnectionFailure[] reasons)
    {
        var a = await ShouldFailConnectionAsync(p.ReadA, "read A", reasons);
        a.Phase.Should().Be(NbdPhase.Transmission, a.Message);
        await ShouldBeOutcomeUnknownAsync(p.WriteB, "write B", reasons);
        var c = await ShouldFailConnectionAsync(p.ReadC, "read C", reasons);
        c.Phase.Should().Be(NbdPhase.Transmission, c.Message);

        var completion = await Bounded(conn.Completion, "Completion");
        completion.Should().BeOfType<NbdConnectionException>();
        ((NbdConnectionException)completion).Reason.Should().BeOneOf(reasons);
        conn.IsClosed.Should().BeTrue();
        conn.InFlight.Should().Be(0);

        await ShouldFailConnectionAsync(conn.ReadAsync(0, new byte[512]).AsTask(), "read after the failure");
        await ShouldFailConnectionAsync(conn.WriteAsync(0, new byte[512]).AsTask(), "write after the failure");
    }

    private async Task AssertClientHungUpAsync()
    {
        var session = await Server.SessionAsync();
        await Bounded(session.Ended, "the client closing its socket after the failure");
    }

    [Fact]
    public async Task CloseWhenFirstRequestArrives_FailsAllWithConnectionClosed()
    {
        Server.Transmission = async s =>
        {
            await s.ReadRequestAsync(); // the write, with its payload
            await s.CloseAsync();
        };
        var conn = await ConnectAsync();
        var p = Start(conn, writeFirst: true);
        await ShouldBeOutcomeUnknownAsync(p.WriteB, "write B (sent, no reply)", NbdConnectionFailure.ConnectionClosed);
        // The reads may or may not have been sent; either way they fail with the connection.
        await ShouldFailConnectionAsync(p.ReadA, "read A", NbdConnectionFailure.ConnectionClosed);
        await ShouldFailConnectionAsync(p.ReadC, "read C", NbdConnectionFailure.ConnectionClosed);
        (await Bounded(conn.Completion, "Completion")).Should().BeOfType<NbdConnectionException>();
        conn.IsClosed.Should().BeTrue();
    }

    [Fact]
    public async Task CloseBetweenReplies_FailsAllWithConnectionClosed()
    {
        Server.Transmission = async s =>
        {
            await s.ReadRequestsAsync(3);
            await s.CloseAsync();
        };
        var conn = await ConnectAsync();
        var p = Start(conn);
        await AssertConnectionFailedAsync(conn, p, NbdConnectionFailure.ConnectionClosed);
    }

    [Fact]
    public async Task AbruptCloseBetweenReplies_FailsAllTyped()
    {
        Server.Transmission = async s =>
        {
            await s.ReadRequestsAsync(3);
            s.Abort();
        };
        var conn = await ConnectAsync();
        var p = Start(conn);
        await AssertConnectionFailedAsync(conn, p, NbdConnectionFailure.ConnectionClosed, NbdConnectionFailure.IOError);
    }

    [Fact]
    public async Task TruncatedSimpleReply_FailsAllWithProtocolError()
    {
        // fakesrv.py truncated-reply: 8 of 16 bytes, then close. EOF inside a message = protocol error (spec §7).
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            await s.SendAsync(WireBuilder.SimpleReply(B(r).Cookie, 0).AsMemory(0, 8));
            await s.CloseAsync();
        };
        var conn = await ConnectAsync();
        await AssertConnectionFailedAsync(conn, Start(conn), NbdConnectionFailure.ProtocolError);
    }

    [Fact]
    public async Task UnknownCookie_FailsAllWithProtocolError_AndHangsUp()
    {
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            var bogus = r.Max(x => x.Cookie) + 1000;
            await s.SendSimpleReplyAsync(bogus, 0);
            await s.HangAsync();
        };
        var conn = await ConnectAsync();
        await AssertConnectionFailedAsync(conn, Start(conn), NbdConnectionFailure.ProtocolError);
        await AssertClientHungUpAsync();
    }

    [Fact]
    public async Task DuplicateReply_FirstSucceeds_ThenProtocolError()
    {
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            await s.ReplyDefaultAsync(A(r));
            await s.ReplyDefaultAsync(A(r));
            await s.HangAsync();
        };
        var data = Pattern(Len, 7);
        Server.Disk.Write(OffsetA, data);
        var conn = await ConnectAsync();
        var p = Start(conn);
        await ShouldSucceedAsync(p.ReadA, "read A (first reply)");
        p.BufferA.Should().Equal(data);
        await ShouldBeOutcomeUnknownAsync(p.WriteB, "write B", NbdConnectionFailure.ProtocolError);
        await ShouldFailConnectionAsync(p.ReadC, "read C", NbdConnectionFailure.ProtocolError);
        await AssertClientHungUpAsync();
    }

    [Fact]
    public async Task BadReplyMagic_FailsAllWithProtocolError()
    {
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            await s.SendAsync(new WireBuilder().U32(0x12560953).U32(0).U64(B(r).Cookie).ToArray());
            await s.HangAsync();
        };
        var conn = await ConnectAsync();
        await AssertConnectionFailedAsync(conn, Start(conn), NbdConnectionFailure.ProtocolError);
        await AssertClientHungUpAsync();
    }

    [Fact]
    public async Task UnknownChunkTypeWithoutErrorBit_FailsAllWithProtocolError()
    {
        // fakesrv.py bad-chunk-type: type 0x42 ⇒ MUST hard-disconnect.
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            await s.SendChunkAsync(Wire.ReplyFlagDone, 0x0042, A(r).Cookie, new byte[4]);
            await s.HangAsync();
        };
        var conn = await ConnectAsync();
        await AssertConnectionFailedAsync(conn, Start(conn), NbdConnectionFailure.ProtocolError);
        await AssertClientHungUpAsync();
    }

    [Fact]
    public async Task UnknownChunkTypeWithErrorBit_FailsOnlyThatRequest()
    {
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            var payload = new WireBuilder().U32(Wire.EIO).U16(3).Utf8("odd").ToArray();
            await s.SendChunkAsync(Wire.ReplyFlagDone, 0x8042, A(r).Cookie, payload);
            await s.ReplyDefaultAsync(B(r));
            await s.ReplyDefaultAsync(C(r));
            await s.ServeAsync();
        };
        var dataC = Pattern(Len, 8);
        Server.Disk.Write(OffsetC, dataC);
        var conn = await ConnectAsync();
        var p = Start(conn);
        await ShouldFailCommandAsync(p.ReadA, "read A (unknown error chunk)");
        await ShouldSucceedAsync(p.WriteB, "write B");
        await ShouldSucceedAsync(p.ReadC, "read C");
        p.BufferC.Should().Equal(dataC);
        conn.IsClosed.Should().BeFalse();
        var again = new byte[Len];
        await ShouldSucceedAsync(conn.ReadAsync(OffsetB, again).AsTask(), "read after the error");
        again.Should().Equal(p.DataB);
    }

    [Fact]
    public async Task OversizedChunkLength_FailsAllWithProtocolError_WithoutWaitingForThePayload()
    {
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            // 64 MiB + 16 > libnbd's 64 MiB + 8 cap; and far beyond the 4 KiB read. Nothing follows.
            await s.SendAsync(WireBuilder.ChunkHeader(Wire.ReplyFlagDone, Wire.ChunkOffsetData, A(r).Cookie, 64 * 1024 * 1024 + 16));
            await s.HangAsync();
        };
        var conn = await ConnectAsync();
        await AssertConnectionFailedAsync(conn, Start(conn), NbdConnectionFailure.ProtocolError);
    }

    [Theory]
    [InlineData(Len - 100, 200)]   // runs past the end of the request
    [InlineData(-512, 512)]        // starts before the request (read C at 128 KiB)
    [InlineData(Len, 1)]           // entirely after the request
    public async Task OffsetDataOutsideTheRequest_FailsAllWithProtocolError(int relativeOffset, int size)
    {
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            var c = C(r);
            await s.SendDataChunkAsync(c.Cookie, (ulong)((long)c.Offset + relativeOffset), new byte[size], done: true);
            await s.HangAsync();
        };
        var conn = await ConnectAsync();
        await AssertConnectionFailedAsync(conn, Start(conn), NbdConnectionFailure.ProtocolError);
    }

    [Fact]
    public async Task OffsetDataWithoutData_FailsAllWithProtocolError()
    {
        // OFFSET_DATA length must be >= 9 (offset + at least one byte).
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            await s.SendChunkAsync(Wire.ReplyFlagDone, Wire.ChunkOffsetData, A(r).Cookie, new WireBuilder().U64(A(r).Offset).ToArray());
            await s.HangAsync();
        };
        var conn = await ConnectAsync();
        await AssertConnectionFailedAsync(conn, Start(conn), NbdConnectionFailure.ProtocolError);
    }

    [Fact]
    public async Task OffsetHoleWithSizeZero_FailsAllWithProtocolError()
    {
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            await s.SendHoleChunkAsync(A(r).Cookie, A(r).Offset, 0, done: true);
            await s.HangAsync();
        };
        var conn = await ConnectAsync();
        await AssertConnectionFailedAsync(conn, Start(conn), NbdConnectionFailure.ProtocolError);
    }

    [Fact]
    public async Task OffsetHoleWithWrongLength_FailsAllWithProtocolError()
    {
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            await s.SendChunkAsync(Wire.ReplyFlagDone, Wire.ChunkOffsetHole, A(r).Cookie, new WireBuilder().U64(A(r).Offset).U32(Len).U32(0).ToArray());
            await s.HangAsync();
        };
        var conn = await ConnectAsync();
        await AssertConnectionFailedAsync(conn, Start(conn), NbdConnectionFailure.ProtocolError);
    }

    [Fact]
    public async Task DataChunkForAWrite_FailsAllWithProtocolError()
    {
        // Content chunks are only valid for READ.
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            await s.SendDataChunkAsync(B(r).Cookie, B(r).Offset, new byte[16], done: true);
            await s.HangAsync();
        };
        var conn = await ConnectAsync();
        await AssertConnectionFailedAsync(conn, Start(conn), NbdConnectionFailure.ProtocolError);
    }

    [Fact]
    public async Task ErrorChunkWithMessageLongerThanChunk_FailsAllWithProtocolError()
    {
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            await s.SendChunkAsync(Wire.ReplyFlagDone, Wire.ChunkError, A(r).Cookie, new WireBuilder().U32(Wire.EIO).U16(200).Utf8("short").ToArray());
            await s.HangAsync();
        };
        var conn = await ConnectAsync();
        await AssertConnectionFailedAsync(conn, Start(conn), NbdConnectionFailure.ProtocolError);
    }

    [Fact]
    public async Task BlockStatusChunkWithWrongLength_FailsAllWithProtocolError()
    {
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            var bs = r.Single(x => x.Type == Wire.CmdBlockStatus);
            // 4 + 8n + 3: not a whole number of extents.
            var payload = new WireBuilder().U32(0).U32(4096).U32(0).U8(1).U8(2).U8(3).ToArray();
            await s.SendChunkAsync(Wire.ReplyFlagDone, Wire.ChunkBlockStatus, bs.Cookie, payload);
            await s.HangAsync();
        };
        var conn = await ConnectAsync();
        var extents = conn.GetExtentsAsync(0, 64 * 1024).AsTask();
        var read = conn.ReadAsync(OffsetC, new byte[Len]).AsTask();
        var write = conn.WriteAsync(OffsetB, new byte[Len]).AsTask();
        await ShouldFailConnectionAsync(extents, "block status", NbdConnectionFailure.ProtocolError);
        await ShouldFailConnectionAsync(read, "read", NbdConnectionFailure.ProtocolError);
        await ShouldBeOutcomeUnknownAsync(write, "write", NbdConnectionFailure.ProtocolError);
        await AssertClientHungUpAsync();
    }

    [Fact]
    public async Task BlockStatusChunkWithZeroExtents_FailsAllWithProtocolError()
    {
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            var bs = r.Single(x => x.Type == Wire.CmdBlockStatus);
            await s.SendChunkAsync(Wire.ReplyFlagDone, Wire.ChunkBlockStatus, bs.Cookie, new WireBuilder().U32(0).ToArray());
            await s.HangAsync();
        };
        var conn = await ConnectAsync();
        var extents = conn.GetExtentsAsync(0, 64 * 1024).AsTask();
        var read = conn.ReadAsync(OffsetC, new byte[Len]).AsTask();
        var write = conn.WriteAsync(OffsetB, new byte[Len]).AsTask();
        await ShouldFailConnectionAsync(extents, "block status", NbdConnectionFailure.ProtocolError);
        await ShouldFailConnectionAsync(read, "read", NbdConnectionFailure.ProtocolError);
        await ShouldBeOutcomeUnknownAsync(write, "write", NbdConnectionFailure.ProtocolError);
    }

    [Fact]
    public async Task CloseInsideADataPayload_FailsAllWithProtocolError()
    {
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            var full = WireBuilder.DataChunk(A(r).Cookie, A(r).Offset, new byte[Len], done: true);
            await s.SendAsync(full.AsMemory(0, Wire.ChunkHeaderSize + 8 + 100));
            await s.CloseAsync();
        };
        var conn = await ConnectAsync();
        await AssertConnectionFailedAsync(conn, Start(conn), NbdConnectionFailure.ProtocolError);
    }

    [Fact]
    public async Task CloseInsideASimpleReadPayload_FailsAllWithProtocolError()
    {
        Server.StructuredReplies = false;
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            await s.SendAsync(WireBuilder.SimpleReply(A(r).Cookie, 0, new byte[100]));
            await s.CloseAsync();
        };
        var conn = await ConnectAsync();
        await AssertConnectionFailedAsync(conn, Start(conn), NbdConnectionFailure.ProtocolError);
    }

    [Fact]
    public async Task ServerNeverAnswers_FailsAllWithRequestTimeout()
    {
        Server.Transmission = async s =>
        {
            await s.ReadRequestsAsync(3);
            await s.HangAsync();
        };
        var conn = await ConnectAsync(Patient with { RequestTimeout = TimeSpan.FromMilliseconds(500) });
        await AssertConnectionFailedAsync(conn, Start(conn), NbdConnectionFailure.RequestTimeout);
        await AssertClientHungUpAsync();
    }

    [Fact]
    public async Task EshutdownReply_SoftDisconnects_PendingFinish_NoNewRequests_DiscSent()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            await s.SendErrorChunkAsync(A(r).Cookie, Wire.ESHUTDOWN, "server is shutting down", done: true);
            await release.Task.WaitAsync(TestBounds.Hang);
            await s.ReplyDefaultAsync(B(r));
            await s.ReplyDefaultAsync(C(r));
            await s.ServeAsync(); // records DISC and anything after it
        };
        var dataC = Pattern(Len, 9);
        Server.Disk.Write(OffsetC, dataC);
        var conn = await ConnectAsync();
        var p = Start(conn);

        await ShouldFailCommandAsync(p.ReadA, "read A", NbdErrorCode.ESHUTDOWN);
        var refused = await OutcomeAsync(conn.ReadAsync(OffsetC, new byte[Len]).AsTask(), "a new request after ESHUTDOWN");
        refused.Should().BeOfType<NbdConnectionException>("no new requests after ESHUTDOWN; got {0}", refused);
        ((NbdConnectionException)refused!).Reason.Should().Be(NbdConnectionFailure.ServerShutdown);

        release.SetResult();
        await ShouldSucceedAsync(p.WriteB, "write B (pending when ESHUTDOWN arrived)");
        await ShouldSucceedAsync(p.ReadC, "read C (pending when ESHUTDOWN arrived)");
        p.BufferC.Should().Equal(dataC);

        var session = await Server.SessionAsync();
        await Bounded(session.Disconnect, "NBD_CMD_DISC after ESHUTDOWN");
        await Bounded(session.Ended, "session end");
        session.Requests.Should().HaveCount(4, "three requests, then DISC, nothing else");
        session.Requests[^1].Type.Should().Be(Wire.CmdDisc);
        session.Violations.Should().BeEmpty();
        (await Bounded(conn.Completion, "Completion")).Should().BeAssignableTo<NbdException>();
        conn.IsClosed.Should().BeTrue();
    }

    [Fact]
    public async Task RepliesOutOfOrder_AllSucceed()
    {
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            await s.ReplyDefaultAsync(C(r));
            await s.ReplyDefaultAsync(B(r));
            await s.ReplyDefaultAsync(A(r));
            await s.ServeAsync();
        };
        var dataA = Pattern(Len, 10);
        var dataC = Pattern(Len, 11);
        Server.Disk.Write(OffsetA, dataA);
        Server.Disk.Write(OffsetC, dataC);
        var conn = await ConnectAsync();
        var p = Start(conn);
        await ShouldSucceedAsync(p.ReadA, "read A");
        await ShouldSucceedAsync(p.WriteB, "write B");
        await ShouldSucceedAsync(p.ReadC, "read C");
        p.BufferA.Should().Equal(dataA);
        p.BufferC.Should().Equal(dataC);
        Server.Disk.Read(OffsetB, Len).Should().Equal(p.DataB);
    }

    [Fact]
    public async Task ManyRequestsAnsweredInShuffledOrder_AllSucceed()
    {
        const int count = 24;
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(count);
            foreach (var x in r.OrderBy(_ => Random.Shared.Next()))
                await s.ReplyDefaultAsync(x);
            await s.ServeAsync();
        };
        for (var i = 0; i < count; i++)
            Server.Disk.Write(i * 8192L, Pattern(8192, 100 + i));
        var conn = await ConnectAsync();
        var buffers = Enumerable.Range(0, count).Select(_ => new byte[8192]).ToArray();
        var tasks = Enumerable.Range(0, count).Select(i => conn.ReadAsync(i * 8192L, buffers[i]).AsTask()).ToArray();
        await Bounded(Task.WhenAll(tasks), "24 pipelined reads");
        for (var i = 0; i < count; i++)
            buffers[i].Should().Equal(Pattern(8192, 100 + i), $"read {i}");
        (await Server.SessionAsync()).Violations.Should().BeEmpty("cookies must be distinct while in flight");
    }

    [Fact]
    public async Task MixedSimpleAndStructuredReplies_OnOneConnection()
    {
        // qemu-nbd / nbdkit use simple replies for writes, flushes and write errors even with SR.
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(6);
            FakeRequest Op(ushort type, long offset) => r.Single(x => x.Type == type && (long)x.Offset == offset);
            await s.SendSimpleReplyAsync(Op(Wire.CmdWrite, 0).Cookie, 0);                      // write OK (simple)
            await s.SendSimpleReplyAsync(Op(Wire.CmdWrite, 65536).Cookie, Wire.ENOSPC);       // write error (simple)
            await s.SendSimpleReplyAsync(Op(Wire.CmdRead, 4096).Cookie, Wire.EIO);            // read error (simple: no payload)
            var read = Op(Wire.CmdRead, 8192);
            await s.SendDataChunkAsync(read.Cookie, read.Offset, Pattern(Len, 12), done: true); // read (structured)
            await s.SendErrorChunkAsync(Op(Wire.CmdRead, 12288).Cookie, Wire.EPERM, "nope", done: true);
            await s.SendSimpleReplyAsync(r.Single(x => x.Type == Wire.CmdFlush).Cookie, 0);   // flush (simple)
            await s.ServeAsync();
        };
        var conn = await ConnectAsync();
        var readOk = new byte[Len];
        var write = conn.WriteAsync(0, Pattern(Len, 13)).AsTask();
        var writeErr = conn.WriteAsync(65536, Pattern(Len, 14)).AsTask();
        var readErrSimple = conn.ReadAsync(4096, new byte[Len]).AsTask();
        var read = conn.ReadAsync(8192, readOk).AsTask();
        var readErrChunk = conn.ReadAsync(12288, new byte[Len]).AsTask();
        var flush = conn.FlushAsync().AsTask();

        await ShouldSucceedAsync(write, "write");
        await ShouldFailCommandAsync(writeErr, "write error", NbdErrorCode.ENOSPC);
        await ShouldFailCommandAsync(readErrSimple, "read error (simple reply)", NbdErrorCode.EIO);
        await ShouldSucceedAsync(read, "read (structured)");
        readOk.Should().Equal(Pattern(Len, 12));
        var chunkErr = await ShouldFailCommandAsync(readErrChunk, "read error (error chunk)", NbdErrorCode.EPERM);
        chunkErr.ServerMessage.Should().Be("nope");
        await ShouldSucceedAsync(flush, "flush");

        var after = new byte[Len];
        Server.Disk.Write(20480, Pattern(Len, 15));
        await ShouldSucceedAsync(conn.ReadAsync(20480, after).AsTask(), "read afterwards");
        after.Should().Equal(Pattern(Len, 15));
        conn.IsClosed.Should().BeFalse();
    }

    [Fact]
    public async Task ReadSplitIntoManyDataAndHoleChunksInRandomOrder_IsReassembled()
    {
        const int length = 64 * 1024;
        var expected = new byte[length];
        var rng = new Random(1234);
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(1);
            var req = r[0];
            var chunks = new List<byte[]>();
            var at = 0;
            while (at < length)
            {
                var size = Math.Min(length - at, rng.Next(1, 5000));
                if (rng.Next(3) == 0)
                {
                    chunks.Add(WireBuilder.HoleChunk(req.Cookie, req.Offset + (ulong)at, (uint)size, done: false));
                }
                else
                {
                    var data = new byte[size];
                    rng.NextBytes(data);
                    data.CopyTo(expected, at);
                    chunks.Add(WireBuilder.DataChunk(req.Cookie, req.Offset + (ulong)at, data, done: false));
                }
                at += size;
            }
            chunks = chunks.OrderBy(_ => rng.Next()).ToList();
            foreach (var c in chunks)
                await s.SendAsync(c);
            await s.SendChunkAsync(Wire.ReplyFlagDone, Wire.ChunkNone, req.Cookie, default);
            await s.ServeAsync();
        };
        var conn = await ConnectAsync();
        var buffer = new byte[length];
        buffer.AsSpan().Fill(0xee); // holes must be zero-filled, not left as they were
        await ShouldSucceedAsync(conn.ReadAsync(1 << 19, buffer).AsTask(), "split read");
        buffer.Should().Equal(expected);
    }

    [Fact]
    public async Task ErrorChunkFollowedByMoreChunksThenDone_FailsOnlyThatRequest_StaysInSync()
    {
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            var a = A(r);
            await s.SendDataChunkAsync(a.Cookie, a.Offset, new byte[1024], done: false);
            await s.SendErrorChunkAsync(a.Cookie, Wire.EIO, "bad sector", done: false, offset: a.Offset + 1024);
            await s.ReplyDefaultAsync(B(r)); // another request's reply in the middle
            await s.SendDataChunkAsync(a.Cookie, a.Offset + 2048, new byte[1024], done: false);
            await s.SendHoleChunkAsync(a.Cookie, a.Offset + 3072, 1024, done: false);
            await s.SendErrorChunkAsync(a.Cookie, Wire.EPERM, "second error", done: false);
            await s.SendDataChunkAsync(a.Cookie, a.Offset + 1024, new byte[1024], done: true);
            await s.ReplyDefaultAsync(C(r));
            await s.ServeAsync();
        };
        var dataC = Pattern(Len, 16);
        Server.Disk.Write(OffsetC, dataC);
        var conn = await ConnectAsync();
        var p = Start(conn);
        var error = await ShouldFailCommandAsync(p.ReadA, "read A", NbdErrorCode.EIO);
        error.ServerMessage.Should().Be("bad sector", "the first error is kept");
        await ShouldSucceedAsync(p.WriteB, "write B");
        await ShouldSucceedAsync(p.ReadC, "read C");
        p.BufferC.Should().Equal(dataC);
        var again = new byte[Len];
        await ShouldSucceedAsync(conn.ReadAsync(OffsetC, again).AsTask(), "read after");
        again.Should().Equal(dataC);
        conn.IsClosed.Should().BeFalse();
    }

    [Theory]
    [InlineData(9999u)]
    [InlineData(0x7fffffffu)]
    [InlineData(2u)]
    public async Task UnknownErrno_IsReportedAsEinval_ConnectionStays(uint errno)
    {
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            await s.SendSimpleReplyAsync(B(r).Cookie, errno);
            await s.SendErrorChunkAsync(A(r).Cookie, errno, "", done: true);
            await s.ReplyDefaultAsync(C(r));
            await s.ServeAsync();
        };
        var conn = await ConnectAsync();
        var p = Start(conn);
        await ShouldFailCommandAsync(p.WriteB, "write B", NbdErrorCode.EINVAL);
        await ShouldFailCommandAsync(p.ReadA, "read A", NbdErrorCode.EINVAL);
        await ShouldSucceedAsync(p.ReadC, "read C");
        conn.IsClosed.Should().BeFalse();
    }

    [Fact]
    public async Task DoneWithoutCoveringTheRead_FailsThatRequest()
    {
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            await s.SendDataChunkAsync(A(r).Cookie, A(r).Offset, new byte[Len / 2], done: true);
            await s.ReplyDefaultAsync(B(r));
            await s.ReplyDefaultAsync(C(r));
            await s.ServeAsync();
        };
        var conn = await ConnectAsync();
        var p = Start(conn);
        var ex = await OutcomeAsync(p.ReadA, "read A (half covered)");
        ex.Should().BeAssignableTo<NbdException>("a read whose reply did not cover it must fail (libnbd: EPROTO)");
        // Either failing just the command or the whole connection is acceptable; nothing may hang or escape untyped.
        var b = await OutcomeAsync(p.WriteB, "write B");
        var c = await OutcomeAsync(p.ReadC, "read C");
        if (b is not null)
            b.Should().BeAssignableTo<NbdException>();
        if (c is not null)
            c.Should().BeAssignableTo<NbdException>();
    }

    [Fact]
    public async Task BlockStatusReplyWithoutOurContext_FailsThatRequestTyped_ConnectionStays()
    {
        // DONE arrives with a chunk for an id we never negotiated and none for ours (libnbd ignores
        // unknown ids; nbdcopy calls such a server broken). The stream is still in sync.
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(1);
            await s.SendBlockStatusAsync(r[0].Cookie, 99, [(r[0].Length, 0u)], done: true);
            await s.ServeAsync();
        };
        var conn = await ConnectAsync();
        var ex = await OutcomeAsync(conn.GetExtentsAsync(0, 65536).AsTask(), "block status");
        // Today this is the base NbdException (NbdConnection.GetExtentsAsync "returned no extents"),
        // reported to the lead as not one of the documented request failure types.
        ex.Should().BeAssignableTo<NbdException>();
        ex.Should().NotBeOfType<NbdConnectionException>("the stream is in sync; only this request failed");
        await ShouldSucceedAsync(conn.ReadAsync(0, new byte[512]).AsTask(), "read afterwards");
        conn.IsClosed.Should().BeFalse();
    }
}
