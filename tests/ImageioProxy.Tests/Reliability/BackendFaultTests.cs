using ImageioProxy.Tests.Support;
using TestSupport;

namespace ImageioProxy.Tests.Reliability;

/// <summary>Backend faults injected with nbdkit filters (nbd-fault-injection.md recipes 1-4, 11) and by
/// killing qemu-nbd: every affected request ends, bounded, with a 5xx whose plain message names the cause;
/// dead connections are replaced, a dead backend fails fast (circuit breaker), and requests succeed again
/// once the backend is back. Timeouts are the fixture's short ones (2 s per NBD request).</summary>
[Collection(ReliabilityCollection.Name)]
public sealed class BackendFaultTests(FaultProxyFixture fixture) : IClassFixture<FaultProxyFixture>
{
    private const string ResendHint = "resend the data written since the last successful flush\n";
    private const int MiB = 1024 * 1024;

    private readonly ReliabilityHttp _http = new(fixture.Data, fixture.RemoteUri);

    private Task<string> AddTicketAsync(NbdServer server, string[]? ops = null)
        => fixture.AddTicketAsync(ops, t => t["url"] = server.ImageioUrl);

    [Fact]
    public async Task Errors_injected_on_demand_fail_each_command_with_500_naming_the_errno_and_stop_when_removed()
    {
        // Recipe 2: the error file switches errors on and off at an exact moment.
        var inject = Path.Combine(fixture.Directory, $"inject-{Guid.NewGuid():N}");
        await using var nbdkit = await NbdkitServer.StartAsync(["memory", "64M", "error=EIO", "error-rate=100%", $"error-file={inject}"],
            new NbdkitOptions { Filters = ["error"] });
        var id = await AddTicketAsync(nbdkit);
        (await _http.PutAsync(id, 0, ReliabilityHttp.RandomBytes(MiB, 1), flush: true)).Status.Should().Be(200);

        await File.WriteAllTextAsync(inject, "");
        var put = await _http.PutAsync(id, 0, ReliabilityHttp.RandomBytes(MiB, 2), flush: false);
        var get = await _http.GetAsync(id, 0, 4096);
        var zero = await _http.ZeroAsync(id, 0, 65536);
        var flush = await _http.FlushAsync(id);
        File.Delete(inject);
        var data = ReliabilityHttp.RandomBytes(MiB, 3);
        var putAfter = await _http.PutAsync(id, MiB, data, flush: true);
        var getAfter = await _http.GetAsync(id, MiB, MiB);

        put.Status.Should().Be(500, put.ToString());
        put.Text.Should().StartWith("Backend error: NBD Write offset=0 ").And.Contain("EIO (input/output error)").And.EndWith(ResendHint);
        get.Status.Should().Be(500, get.ToString());
        get.Text.Should().StartWith("Backend error: NBD Read offset=0 length=4096 failed: EIO").And.NotContain("resend");
        zero.Status.Should().Be(500, zero.ToString());
        zero.Text.Should().StartWith("Backend error: NBD WriteZeroes").And.Contain("EIO").And.EndWith(ResendHint);
        // nbdkit 1.32's error filter cannot fail a flush; it passes, covering only acknowledged writes.
        flush.Status.Should().Be(200, flush.ToString());
        // A server error leaves the connection usable: once the errors stop, requests succeed.
        putAfter.Status.Should().Be(200, putAfter.ToString());
        getAfter.Status.Should().Be(206);
        getAfter.Body.Should().Equal(data);
    }

    [Fact]
    public async Task Random_errors_fail_some_requests_with_500_and_none_hangs_or_reports_a_failed_write_as_done()
    {
        // Recipe 2: every command fails at random with ENOSPC half of the time.
        await using var nbdkit = await NbdkitServer.StartAsync(["memory", "64M", "error=ENOSPC", "error-rate=50%"],
            new NbdkitOptions { Filters = ["error"] });
        var id = await AddTicketAsync(nbdkit);

        var replies = new List<Reply>();
        for (var i = 0; i < 24; i++)
        {
            var offset = (long)(i % 8) * MiB;
            replies.Add((i % 3) switch
            {
                0 => await _http.PutAsync(id, offset, ReliabilityHttp.RandomBytes(MiB, i), flush: i % 2 == 0),
                1 => await _http.GetAsync(id, offset, 64 * 1024),
                _ => await _http.ZeroAsync(id, offset, 64 * 1024, flush: true),
            });
        }

        replies.Should().OnlyContain(r => r.Status == 200 || r.Status == 206 || (r.Status == 500 && r.Text.StartsWith("Backend error: NBD ", StringComparison.Ordinal) && r.Text.Contains("ENOSPC", StringComparison.Ordinal)),
            string.Join("\n", replies));
        replies.Should().Contain(r => r.Status == 500, "half of all NBD commands fail");
        replies.Should().Contain(r => r.Status != 500, "half of all NBD commands succeed");
    }

    [Fact]
    public async Task Hung_backend_fails_requests_with_504_after_the_request_timeout_and_they_succeed_after_it_resumes()
    {
        // Recipe 4: the pause filter holds every request; Backend:RequestTimeout (2 s here) abandons the connection.
        await using var nbdkit = await NbdkitServer.StartAsync(["memory", "64M"], new NbdkitOptions { Filters = ["pause"] });
        var id = await AddTicketAsync(nbdkit);
        (await _http.GetAsync(id, 0, 4096)).Status.Should().Be(206);

        await nbdkit.PauseAsync();
        var put = await _http.PutAsync(id, 0, ReliabilityHttp.RandomBytes(MiB, 4), flush: false);
        var get = await _http.GetAsync(id, 0, 4096);
        var zero = await _http.ZeroAsync(id, 0, MiB);
        await nbdkit.ResumeAsync();
        var data = ReliabilityHttp.RandomBytes(MiB, 5);
        var putAfter = await _http.PutAsync(id, 0, data, flush: true);
        var getAfter = await _http.GetAsync(id, 0, MiB);

        // The write was sent and never answered: its outcome is unknown, so it is reported failed.
        put.Status.Should().Be(504, put.ToString());
        put.Text.Should().StartWith("Backend timeout, write outcome unknown: ").And.Contain("within 2 s").And.EndWith(ResendHint);
        get.Status.Should().Be(504, get.ToString());
        get.Text.Should().StartWith("Backend timeout: ").And.Contain("no reply to Read");
        zero.Status.Should().Be(504, zero.ToString());
        zero.Text.Should().StartWith("Backend timeout, write outcome unknown: NBD WriteZeroes").And.EndWith(ResendHint);
        putAfter.Status.Should().Be(200, putAfter.ToString());
        getAfter.Body.Should().Equal(data);
    }

    [Fact]
    public async Task Backend_slower_than_the_request_timeout_is_504_while_faster_commands_succeed()
    {
        // Recipe 3: writes take 4 s, twice Backend:RequestTimeout; reads are not delayed.
        await using var nbdkit = await NbdkitServer.StartAsync(["memory", "64M", "delay-write=4"], new NbdkitOptions { Filters = ["delay"] });
        var id = await AddTicketAsync(nbdkit);

        var put = await _http.PutAsync(id, 0, ReliabilityHttp.RandomBytes(64 * 1024, 6), flush: false);
        var get = await _http.GetAsync(id, 0, 64 * 1024);

        put.Status.Should().Be(504, put.ToString());
        put.Text.Should().StartWith("Backend timeout, write outcome unknown: ");
        get.Status.Should().Be(206, get.ToString());
    }

    [Fact]
    public async Task Write_in_flight_when_the_backend_is_killed_is_reported_failed_with_outcome_unknown_never_as_done()
    {
        // The log filter (outside) records the write arriving; the pause filter (inside) keeps it unanswered.
        await using var nbdkit = await NbdkitServer.StartAsync(["memory", "64M"], new NbdkitOptions { Filters = ["log", "pause"] });
        var id = await AddTicketAsync(nbdkit);
        (await _http.GetAsync(id, 0, 4096)).Status.Should().Be(206);
        await nbdkit.PauseAsync();

        var put = _http.PutAsync(id, 0, ReliabilityHttp.RandomBytes(MiB, 7), flush: false);
        await WaitUntilAsync(async () => (await nbdkit.ReadLogLinesAsync()).Any(l => l.Contains(" Write ", StringComparison.Ordinal)));
        nbdkit.Kill();
        var reply = await put.WaitAsync(ReliabilityHttp.Bound);

        reply.Status.Should().Be(502, reply.ToString());
        reply.Text.Should().StartWith("Backend connection lost, write outcome unknown: NBD Write offset=0 length=1048576: outcome unknown")
            .And.EndWith(ResendHint);
    }

    [Fact]
    public async Task Qemu_nbd_killed_mid_upload_fails_the_upload_then_fails_fast_while_dead_and_recovers_after_restart()
    {
        using var directory = TempDirectory.Create("rel");
        var image = directory.Combine("disk.raw");
        var socket = directory.SocketPath();
        await QemuImg.CreateAsync(image, "raw", ProxyFixture.DefaultImageSize);
        var source = fixture.CreateSourceFile(16 * MiB, seed: 8);
        var qemuNbd = await StartQemuNbdAsync(image, socket);
        try
        {
            // Write-only, so that "transferred" counts acknowledged bytes.
            var id = await fixture.AddTicketAsync(["write"], t => t["url"] = $"nbd:unix:{socket}");

            // 1. A slow upload (2 MiB/s); qemu-nbd dies once some of it was acknowledged, unflushed.
            var upload = fixture.CurlAsync("--limit-rate", "2M", "-T", source, _http.ImageUrl(id) + "?flush=n");
            await WaitUntilAsync(async () => await ReliabilityHttp.TransferredAsync(fixture.Control, id) >= 2 * MiB);
            qemuNbd.Kill();
            await qemuNbd.WaitForExitAsync(ReliabilityHttp.Bound);
            var failedUpload = await upload.WaitAsync(ReliabilityHttp.Bound);

            // 2. While it is dead: 503 at once, and after 3 failed connection attempts the circuit opens.
            var whileDead = new List<Reply>();
            for (var i = 0; i < 3; i++)
            {
                whileDead.Add(await _http.GetAsync(id, 0, 4096));
            }

            // 3. Back on the same socket: the breaker lets a probe through after 1 s and requests succeed.
            File.Delete(socket);
            await qemuNbd.DisposeAsync();
            qemuNbd = await StartQemuNbdAsync(image, socket);
            await WaitUntilAsync(async () => (await _http.GetAsync(id, 0, 4096)).Status == 206);

            // 4. The client resends since its last flush (here: everything). The first flush reports that
            //    acknowledged writes died unflushed with the old connection; the next resend succeeds.
            var data = await File.ReadAllBytesAsync(source);
            var firstResend = await _http.PutAsync(id, 0, data, flush: true);
            var secondResend = await _http.PutAsync(id, 0, data, flush: true);

            failedUpload.Status.Should().BeOneOf([502, 503], $"{failedUpload.Status} {failedUpload.Text}");
            failedUpload.Text.Should().StartWith("Backend ").And.EndWith(ResendHint);
            whileDead.Should().OnlyContain(r => r.Status == 503 && r.Text.StartsWith("Backend unavailable: ", StringComparison.Ordinal) && r.RetryAfter != null,
                string.Join("\n", whileDead));
            whileDead[^1].Text.Should().Contain("circuit open").And.NotContain(socket);
            firstResend.Status.Should().Be(500, firstResend.ToString());
            firstResend.Text.Should().Contain("acknowledged but unflushed writes was lost").And.EndWith(ResendHint);
            secondResend.Status.Should().Be(200, secondResend.ToString());

            qemuNbd.Kill();
            await qemuNbd.WaitForExitAsync(ReliabilityHttp.Bound);
            var compare = await QemuImg.CompareAsync(source, image);
            compare.Identical.Should().BeTrue(compare.Output);
        }
        finally
        {
            await qemuNbd.DisposeAsync();
        }
    }

    /// <summary>qemu-nbd on a fixed socket, so that a restarted one serves the ticket's URL again.</summary>
    internal static async Task<ExternalProcess> StartQemuNbdAsync(string image, string socket, string format = "raw")
    {
        var process = ExternalProcess.Start("qemu-nbd", [$"--format={format}", "--persistent", "--shared=8", "--cache=writeback", $"--socket={socket}", image],
            new ExternalProcessOptions { Environment = QemuNbdServer.DefaultEnvironment });
        await process.WaitForUnixSocketAsync(socket, ReliabilityHttp.Bound);
        return process;
    }

    /// <summary>Polls <paramref name="condition"/> every 50 ms; a condition never met fails the test after
    /// <see cref="ReliabilityHttp.Bound"/> instead of hanging it.</summary>
    internal static async Task WaitUntilAsync(Func<Task<bool>> condition)
    {
        using var timeout = new CancellationTokenSource(ReliabilityHttp.Bound);
        while (!await condition())
        {
            await Task.Delay(50, timeout.Token);
        }
    }
}
