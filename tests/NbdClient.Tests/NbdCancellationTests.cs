using NbdClient.Tests.Fakes;

namespace NbdClient.Tests;

/// <summary>Cancellation: NBD has no cancel command, so a cancelled request that was sent still gets a
/// reply. The client must drain it without touching the caller's buffer and stay in sync; a cancelled
/// request that was not sent yet must never be sent.</summary>
public sealed class NbdCancellationTests : FakeServerTestBase
{
    private const int Len = 4096;

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task CancelledRead_ReplyArrivesLater_BufferUntouched_StreamInSync(bool structured)
    {
        Server.StructuredReplies = structured;
        var arrived = new TaskCompletionSource<FakeRequest>(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Server.Transmission = async s =>
        {
            var r = (await s.ReadRequestsAsync(1))[0];
            arrived.SetResult(r);
            await release.Task.WaitAsync(TestBounds.Hang);
            var late = Enumerable.Repeat((byte)0xab, (int)r.Length).ToArray();
            if (structured)
            {
                // Two chunks and a hole: several chances to write into a stale buffer.
                await s.SendDataChunkAsync(r.Cookie, r.Offset, late.AsMemory(0, 1024), done: false);
                await s.SendHoleChunkAsync(r.Cookie, r.Offset + 1024, 1024, done: false);
                await s.SendDataChunkAsync(r.Cookie, r.Offset + 2048, late.AsMemory(2048), done: true);
            }
            else
            {
                await s.SendSimpleReplyAsync(r.Cookie, 0, late);
            }
            await s.ServeAsync();
        };
        var conn = await ConnectAsync();

        var buffer = new byte[Len];
        buffer.AsSpan().Fill(0x11);
        using var cts = new CancellationTokenSource();
        var read = conn.ReadAsync(0, buffer, cts.Token).AsTask();
        await Bounded(arrived.Task, "the read reaching the server");
        cts.Cancel();
        var ex = await OutcomeAsync(read, "cancelled read");
        ex.Should().BeAssignableTo<OperationCanceledException>("the caller cancelled; got {0}", ex);

        // From here on the buffer belongs to the caller again.
        buffer.AsSpan().Fill(0x22);
        release.SetResult();

        var expected = Pattern(Len, 77);
        Server.Disk.Write(8192, expected);
        var next = new byte[Len];
        await ShouldSucceedAsync(conn.ReadAsync(8192, next).AsTask(), "the next read on the same connection");
        next.Should().Equal(expected, "the late reply must be consumed, not misread as this one's");
        buffer.Should().OnlyContain(b => b == 0x22, "nothing may be written into a cancelled read's buffer");
        conn.IsClosed.Should().BeFalse();
        (await Server.SessionAsync()).Violations.Should().BeEmpty();
    }

    [Fact]
    public async Task CancelledWhileQueued_IsNeverSent()
    {
        var arrived = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Server.Transmission = async s =>
        {
            var first = (await s.ReadRequestsAsync(1))[0];
            arrived.SetResult();
            await release.Task.WaitAsync(TestBounds.Hang);
            await s.ReplyDefaultAsync(first);
            await s.ServeAsync();
        };
        var conn = await ConnectAsync(Patient with { MaxInFlight = 1 });

        var a = conn.ReadAsync(0, new byte[Len]).AsTask();
        await Bounded(arrived.Task, "request A reaching the server");
        using var cts = new CancellationTokenSource();
        var b = conn.ReadAsync(Len, new byte[Len], cts.Token).AsTask(); // waits for the only in-flight slot
        cts.Cancel();
        var ex = await OutcomeAsync(b, "queued request B");
        ex.Should().BeAssignableTo<OperationCanceledException>("B was cancelled while queued; got {0}", ex);

        release.SetResult();
        await ShouldSucceedAsync(a, "request A");
        await ShouldSucceedAsync(conn.ReadAsync(2 * Len, new byte[Len]).AsTask(), "request C");
        await Bounded(conn.DisconnectAsync().AsTask(), "disconnect");

        var session = await Server.SessionAsync();
        await Bounded(session.Ended, "session end");
        session.Requests.Where(r => r.Type != Wire.CmdDisc).Select(r => (long)r.Offset)
            .Should().Equal([0L, 2L * Len], "the cancelled request B (offset 4096) must never be sent");
        session.Violations.Should().BeEmpty();
    }

    [Fact]
    public async Task AlreadyCancelledToken_NothingSent_ConnectionUsable()
    {
        var conn = await ConnectAsync();
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var read = await OutcomeAsync(conn.ReadAsync(0, new byte[Len], cts.Token).AsTask(), "read");
        read.Should().BeAssignableTo<OperationCanceledException>();
        var write = await OutcomeAsync(conn.WriteAsync(0, new byte[Len], cancellationToken: cts.Token).AsTask(), "write");
        write.Should().BeAssignableTo<OperationCanceledException>();
        var flush = await OutcomeAsync(conn.FlushAsync(cts.Token).AsTask(), "flush");
        flush.Should().BeAssignableTo<OperationCanceledException>();

        await ShouldSucceedAsync(conn.ReadAsync(Len, new byte[Len]).AsTask(), "a read afterwards");
        var session = await Server.SessionAsync();
        session.Requests.Select(r => (long)r.Offset).Should().Equal([(long)Len], "only the uncancelled read was sent");
        Server.Disk.Read(0, Len).Should().OnlyContain(b => b == 0);
    }

    [Fact]
    public async Task CancelledWrite_AfterSending_ConnectionStaysInSync()
    {
        var arrived = new TaskCompletionSource<FakeRequest>(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Server.Transmission = async s =>
        {
            var w = (await s.ReadRequestsAsync(1))[0];
            arrived.SetResult(w);
            await release.Task.WaitAsync(TestBounds.Hang);
            await s.ReplyDefaultAsync(w);
            await s.ServeAsync();
        };
        var conn = await ConnectAsync();
        using var cts = new CancellationTokenSource();
        var data = Pattern(Len, 5);
        var write = conn.WriteAsync(0, data, cancellationToken: cts.Token).AsTask();
        await Bounded(arrived.Task, "the write reaching the server");
        cts.Cancel();
        var ex = await OutcomeAsync(write, "cancelled write");
        // Either the caller gave up waiting (OCE) or the write completed first; never an untyped error.
        if (ex is not null)
            ex.Should().BeAssignableTo<OperationCanceledException>();
        release.SetResult();
        var back = new byte[Len];
        await ShouldSucceedAsync(conn.ReadAsync(0, back).AsTask(), "read back");
        back.Should().Equal(data, "the server applied the write; its late reply was consumed");
        conn.IsClosed.Should().BeFalse();
    }
}
