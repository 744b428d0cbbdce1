using System.Globalization;
using System.Net.Sockets;
using ImageioProxy.Tests.Support;
using TestSupport;

namespace ImageioProxy.Tests.Reliability;

/// <summary>SIGTERM to the proxy as a child process (ecosystem.md §2.5): new requests are refused at once,
/// running ones finish or fail cleanly, every ticket's pool is flushed, and the process exits within
/// Daemon:ShutdownTimeout, even when the backend hangs.</summary>
[Collection(ReliabilityCollection.Name)]
public sealed class ShutdownTests
{
    private const int MiB = 1024 * 1024;

    /// <summary>Time a process may need past its shutdown timeout to tear down the runtime.</summary>
    private static readonly TimeSpan ExitMargin = TimeSpan.FromSeconds(5);

    [Fact]
    public async Task Sigterm_refuses_new_requests_lets_running_uploads_finish_flushes_every_ticket_and_exits_in_time()
    {
        using var directory = TempDirectory.Create("stop");
        var first = directory.Combine("first.qcow2");
        var second = directory.Combine("second.qcow2");
        await QemuImg.CreateAsync(first, "qcow2", ProxyFixture.DefaultImageSize);
        await QemuImg.CreateAsync(second, "qcow2", ProxyFixture.DefaultImageSize);
        await using var firstNbd = await QemuNbdServer.StartAsync(first, new QemuNbdOptions { Format = "qcow2", Cache = "writeback" });
        await using var secondNbd = await QemuNbdServer.StartAsync(second, new QemuNbdOptions { Format = "qcow2", Cache = "writeback" });
        const int ShutdownSeconds = 8; // 6 s to drain requests, 2 s reserved for flushing
        await using var proxy = await ChildProxy.StartAsync(directory.Path, new Dictionary<string, string>
        {
            ["Daemon:ShutdownTimeout"] = ShutdownSeconds.ToString(CultureInfo.InvariantCulture),
        });
        // Write-only tickets: "transferred" shows when an upload is under way.
        var running = ReliabilityTickets.For(firstNbd.ImageioUrl, ["write"]);
        var stalled = ReliabilityTickets.For(firstNbd.ImageioUrl, ["write"]);
        var other = ReliabilityTickets.For(secondNbd.ImageioUrl, ["write"]);
        foreach (var ticket in new[] { running, stalled, other })
        {
            await proxy.AddTicketAsync(ticket);
        }
        using var client = new HttpClient();
        var http = new ReliabilityHttp(client, proxy.RemoteUri);
        var done = ReliabilityHttp.RandomBytes(4 * MiB, 21);
        var inFlight = ReliabilityHttp.RandomBytes(4 * MiB, 22);
        var otherDone = ReliabilityHttp.RandomBytes(4 * MiB, 23);

        // Finished before SIGTERM, never flushed by the client: only the shutdown flush makes them durable.
        var doneReply = await http.PutAsync(Id(running), 16 * MiB, done, flush: false);
        var otherReply = await http.PutAsync(Id(other), 0, otherDone, flush: false);
        // Running at SIGTERM: half sent, the rest sent after; and one whose client stalls for good.
        await using var runningUpload = await StartUploadAsync(proxy, Id(running), 0, inFlight, sendBytes: 2 * MiB);
        await using var stalledUpload = await StartUploadAsync(proxy, Id(stalled), 8 * MiB, ReliabilityHttp.RandomBytes(4 * MiB, 24), sendBytes: MiB);
        await BackendFaultTests.WaitUntilAsync(async () => await ReliabilityHttp.TransferredAsync(proxy.Control, Id(running)) >= 2 * MiB
            && await ReliabilityHttp.TransferredAsync(proxy.Control, Id(stalled)) >= MiB);

        proxy.Process.Kill(ProcessSignal.Terminate);
        await BackendFaultTests.WaitUntilAsync(async () => !await AcceptsConnectionsAsync(proxy.Port));
        var refused = await Processes.CurlAsync(directory.Path, "--max-time", "10", http.ImageUrl(Id(other)));
        await runningUpload.SendAsync(inFlight[(2 * MiB)..]);
        var runningReply = await runningUpload.ReadResponseAsync().WaitAsync(ReliabilityHttp.Bound);
        await FluentActions.Awaiting(() => stalledUpload.ReadResponseAsync().WaitAsync(ReliabilityHttp.Bound))
            .Should().ThrowAsync<IOException>("a request still running at the end of the drain is aborted, never answered 200");
        var exitCode = await proxy.Process.WaitForExitAsync(TimeSpan.FromSeconds(ShutdownSeconds) + ExitMargin);
        firstNbd.Kill();
        secondNbd.Kill();
        await firstNbd.Process.WaitForExitAsync(ReliabilityHttp.Bound);
        await secondNbd.Process.WaitForExitAsync(ReliabilityHttp.Bound);

        doneReply.Status.Should().Be(200);
        otherReply.Status.Should().Be(200);
        refused.Status.Should().Be(0, "curl could not connect: the listener closed at SIGTERM");
        refused.Stderr.Should().Contain("connect");
        runningReply.Status.Should().Be(200, runningReply.Text);
        exitCode.Should().Be(0, proxy.Process.Output);
        proxy.Process.Output.Should().Contain("every pool was flushed").And.NotContain("Shutdown deadline");
        (await CrashConsistencyTests.ReadRangeAsync(first, 0, inFlight.Length)).Should().Equal(inFlight);
        (await CrashConsistencyTests.ReadRangeAsync(first, 16 * MiB, done.Length)).Should().Equal(done);
        (await CrashConsistencyTests.ReadRangeAsync(second, 0, otherDone.Length)).Should().Equal(otherDone, "every ticket's pool is flushed");
    }

    [Fact]
    public async Task Sigterm_with_a_hung_backend_still_exits_within_the_shutdown_timeout()
    {
        using var directory = TempDirectory.Create("stop");
        await using var nbdkit = await NbdkitServer.StartAsync(["memory", "64M"], new NbdkitOptions { Filters = ["pause"] });
        const int ShutdownSeconds = 3;
        await using var proxy = await ChildProxy.StartAsync(directory.Path, new Dictionary<string, string>
        {
            ["Daemon:ShutdownTimeout"] = ShutdownSeconds.ToString(CultureInfo.InvariantCulture),
            ["Backend:RequestTimeout"] = "600", // the hang outlasts the shutdown
        });
        var ticket = ReliabilityTickets.For(nbdkit.ImageioUrl, ["write"]);
        await proxy.AddTicketAsync(ticket);
        using var client = new HttpClient();
        var http = new ReliabilityHttp(client, proxy.RemoteUri);
        (await http.PutAsync(Id(ticket), 0, ReliabilityHttp.RandomBytes(MiB, 31), flush: true)).Status.Should().Be(200);

        await nbdkit.PauseAsync();
        var data = ReliabilityHttp.RandomBytes(MiB, 32);
        await using var hung = await StartUploadAsync(proxy, Id(ticket), 0, data, sendBytes: data.Length);
        await BackendFaultTests.WaitUntilAsync(() => ReliabilityHttp.ActiveAsync(proxy.Control, Id(ticket)));
        proxy.Process.Kill(ProcessSignal.Terminate);
        var exitCode = await proxy.Process.WaitForExitAsync(TimeSpan.FromSeconds(ShutdownSeconds) + ExitMargin);
        await nbdkit.ResumeAsync();

        exitCode.Should().Be(0, proxy.Process.Output);
        proxy.Process.Output.Should().Contain($"Shutdown deadline of {ShutdownSeconds} s reached");
        await FluentActions.Awaiting(() => hung.ReadResponseAsync().WaitAsync(ReliabilityHttp.Bound)).Should().ThrowAsync<IOException>();
    }

    private static string Id(Dictionary<string, object?> ticket) => (string)ticket["uuid"]!;

    /// <summary>A PUT (flush=n) whose headers and first <paramref name="sendBytes"/> body bytes are sent.</summary>
    private static async Task<RawHttp> StartUploadAsync(ChildProxy proxy, string ticketId, long offset, byte[] data, int sendBytes)
    {
        var http = await RawHttp.ConnectAsync(proxy.RemoteUri);
        await http.SendAsync($"PUT /images/{ticketId}?flush=n HTTP/1.1\nHost: localhost\nContent-Length: {data.Length}\n"
            + $"Content-Range: bytes {offset}-{offset + data.Length - 1}/*\n\n");
        await http.SendAsync(data[..sendBytes]);
        return http;
    }

    private static async Task<bool> AcceptsConnectionsAsync(int port)
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            await socket.ConnectAsync("127.0.0.1", port).WaitAsync(ReliabilityHttp.Bound);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }
}
