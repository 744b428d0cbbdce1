using System.Net.Sockets;
using NbdClient.Internal;
using NbdClient.Tests.Fakes;

namespace NbdClient.Tests.Internal;

/// <summary>Zero-copy writes (NbdClientOptions.ZeroCopyWrites, SpliceSender) against the in-process server:
/// what it receives, and who may touch a payload while the kernel may still hold its pages.</summary>
public sealed class SpliceSenderTests : FakeServerTestBase
{
    private static NbdClientOptions ZeroCopy { get; } = Patient with { ZeroCopyWrites = true };

    [Fact]
    public void ZeroCopyWrites_IsOffByDefault()
    {
        new NbdClientOptions().ZeroCopyWrites.Should().BeFalse("the library cannot know that its callers leave a failed write's buffer alone");
    }

    [Fact]
    public async Task Payloads_ArriveIntact_InOrder_WithSmallWritesBetween()
    {
        Server.Size = 16 << 20;
        var conn = await ConnectAsync(ZeroCopy);
        conn.SendsByReference.Should().BeTrue();

        var payloads = new[] { Pattern(2 << 20, 1), Pattern(4096, 2), Pattern((1 << 20) + 5, 3), Pattern(64 << 10, 4) };
        var writes = payloads.Select((p, i) => conn.WriteAsync(i * (4L << 20), p).AsTask()).ToList();
        await ShouldSucceedAsync(Task.WhenAll(writes), "the writes");

        for (var i = 0; i < payloads.Length; i++)
        {
            Server.Disk.Read(i * (4L << 20), payloads[i].Length).Should().Equal(payloads[i], "write {0} must land as sent", i);
        }
        var session = await Server.SessionAsync();
        session.Requests.Where(r => r.Type == Wire.CmdWrite).Select(r => (long)r.Offset)
            .Should().Equal(payloads.Select((_, i) => i * (4L << 20)), "one writer sends requests in the order they were submitted");
        session.Violations.Should().BeEmpty();
    }

    [Fact]
    public async Task CancelledWrite_HoldsTheCaller_UntilTheServerAnswers()
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
        var conn = await ConnectAsync(ZeroCopy);
        using var cts = new CancellationTokenSource();
        var data = Pattern(1 << 20, 9);
        var write = conn.WriteAsync(0, data, cancellationToken: cts.Token).AsTask();
        await Bounded(arrived.Task, "the write reaching the server");

        cts.Cancel();
        await Task.Delay(200); // room for a wrong early release to happen
        write.IsCompleted.Should().BeFalse("until the reply, the server's socket may still hold the caller's pages");

        release.SetResult();
        var ex = await OutcomeAsync(write, "cancelled write");
        ex.Should().BeAssignableTo<OperationCanceledException>("the caller cancelled; got {0}", ex);
        (await arrived.Task).Payload.Should().Equal(data);
        var back = new byte[data.Length];
        await ShouldSucceedAsync(conn.ReadAsync(0, back).AsTask(), "read back on the same connection");
        back.Should().Equal(data);
        conn.IsClosed.Should().BeFalse();
    }

    [Fact]
    public async Task ServerGoneMidPayload_FailsTheWrite_AsOutcomeUnknown_WithoutHanging()
    {
        var headerRead = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Server.Transmission = async s =>
        {
            await s.ReadExactAsync(28); // the request header only: the payload stays in the socket
            headerRead.SetResult();
            s.Abort();
        };
        Server.Size = 32 << 20;
        var conn = await ConnectAsync(ZeroCopy with { SocketBufferSize = 64 << 10 });

        var write = conn.WriteAsync(0, Pattern(16 << 20, 3)).AsTask();
        await Bounded(headerRead.Task, "the request header reaching the server");
        var ex = await OutcomeAsync(write, "the write to a vanished server");

        ex.Should().BeOfType<NbdOutcomeUnknownException>("the request was on the wire when the connection died; got {0}", ex);
        conn.IsClosed.Should().BeTrue();
    }

    [Fact]
    public async Task AfterAFailure_AStrandedPayload_StaysUntouched_UntilTheServerReadItOrLeft()
    {
        var headerRead = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var readPayload = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var late = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        Server.Transmission = async s =>
        {
            await s.ReadExactAsync(28); // the header only: the payload stays in the socket
            headerRead.SetResult();
            await readPayload.Task.WaitAsync(TestBounds.Hang);
            late.SetResult(await s.ReadExactAsync(StrandedLength)); // the server applies the write late
            s.Abort();
        };
        var conn = await ConnectAsync(ZeroCopy with { RequestTimeout = TimeSpan.FromSeconds(1) });
        var (write, payload, expected) = StartWrite(conn);
        await Bounded(headerRead.Task, "the request header reaching the server");

        var ex = await OutcomeAsync(write, "the unanswered write");
        ex.Should().BeOfType<NbdOutcomeUnknownException>("the request timeout abandoned the connection; got {0}", ex);
        Collect();
        payload.IsAlive.Should().BeTrue("the server's socket still holds the payload's pages, so they stay pinned");

        readPayload.SetResult();
        (await Bounded(late.Task, "the server reading the payload late")).Should().Equal(expected);
        await Bounded(Task.Run(async () =>
        {
            while (payload.IsAlive)
            {
                Collect();
                await Task.Delay(20);
            }
        }), "the payload being released once the socket gave it up");
    }

    // Above the zero-copy threshold, and small enough to be all in the socket with its default buffer
    // (208 KiB) before the request times out.
    private const int StrandedLength = 96 * 1024;

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static (Task Write, WeakReference Payload, byte[] Expected) StartWrite(NbdConnection conn)
    {
        var data = Pattern(StrandedLength, 21);
        return (conn.WriteAsync(0, data).AsTask(), new WeakReference(data), data.ToArray());
    }

    private static void Collect()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
    }

    [Fact]
    public void Disposing_an_unused_sender_closes_its_pipe_at_once()
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        var sender = SpliceSender.TryCreate(socket);
        sender.Should().NotBeNull("pipe2 works on Linux");
        var pipe = sender!.Pipe;
        var read = PipeIdentity(pipe.Read);
        var write = PipeIdentity(pipe.Write);
        read.Should().StartWith("pipe:");

        sender.Dispose();

        PipeIdentity(pipe.Read).Should().NotBe(read, "the descriptor is closed (or reused for something else)");
        PipeIdentity(pipe.Write).Should().NotBe(write);
    }

    [Fact]
    public async Task A_sender_that_ran_sends_exactly_and_closes_its_pipe_when_disposed()
    {
        using var dir = global::TestSupport.TempDirectory.Create();
        var path = dir.Combine("s.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen();
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await client.ConnectAsync(new UnixDomainSocketEndPoint(path));
        using var server = await listener.AcceptAsync();
        var sender = SpliceSender.TryCreate(client)!;
        var pipe = sender.Pipe;
        var read = PipeIdentity(pipe.Read);

        // More than the pipe and the socket buffer hold, so the sender has to wait for room at least once.
        var data = GC.AllocateUninitializedArray<byte>(8 << 20, pinned: true);
        new Random(5).NextBytes(data);
        var received = new byte[data.Length];
        var receive = Task.Run(async () =>
        {
            for (var got = 0; got < received.Length;)
            {
                got += await server.ReceiveAsync(received.AsMemory(got));
            }
        });
        await Bounded(SendAsync(sender, data), "the spliced send");
        await Bounded(receive, "receiving what was spliced");
        received.Should().Equal(data);

        sender.Dispose();
        await Bounded(Task.Run(async () =>
        {
            while (PipeIdentity(pipe.Read) == read)
            {
                await Task.Delay(10);
            }
        }), "the sender's thread closing the pipe");
    }

    private static unsafe Task SendAsync(SpliceSender sender, byte[] pinned)
    {
        fixed (byte* data = pinned)
        {
            return sender.SendAsync(data, pinned.Length); // the array is on the pinned heap: the address stays valid
        }
    }

    /// <summary>What a descriptor of this process refers to ("pipe:[inode]"), or "" once it is closed.</summary>
    private static string PipeIdentity(int fd)
    {
        try
        {
            return new FileInfo($"/proc/self/fd/{fd}").LinkTarget ?? "";
        }
        catch (IOException)
        {
            return "";
        }
    }
}
