using System.Diagnostics;
using System.Globalization;
using System.Text;
using TestSupport;

namespace ImageioProxy.Tests.TestSupport;

public class FlushBarrierCheckerTests
{
    private static readonly DateTimeOffset T0 = new(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);

    /// <summary>Time t (in microseconds after T0) on both clocks.</summary>
    private static DateTimeOffset At(int micros) => T0.AddTicks(micros * 10L);

    /// <summary>Builds log text; each line is (microseconds, text after the timestamp).</summary>
    private static IReadOnlyList<NbdkitRequest> Log(params (int Micros, string Text)[] lines)
    {
        var text = new StringBuilder();
        foreach (var (micros, line) in lines)
        {
            text.Append(At(micros).ToString("yyyy-MM-dd HH:mm:ss.ffffff", CultureInfo.InvariantCulture)).Append(' ').Append(line).Append('\n');
        }

        return NbdkitLog.PairRequests(NbdkitLog.Parse(text.ToString(), TimeZoneInfo.Utc));
    }

    private static HttpWriteFact Put(long offset, long length, int answeredAt, int? sentAt = null) =>
        new(offset, length, false, sentAt is { } s ? At(s) : null, At(answeredAt));

    private static HttpFlushFact Flush(int sentAt, int answeredAt) => new(At(sentAt), At(answeredAt));

    [Fact]
    public void Write_then_flush_on_the_same_connection_holds()
    {
        var log = Log(
            (10, "connection=1 Write id=1 offset=0x0 count=0x1000 fua=0 ..."),
            (11, "connection=1 ...Write id=1 return=0"),
            (30, "connection=1 Flush id=2 ..."),
            (31, "connection=1 ...Flush id=2 return=0"));

        var violations = FlushBarrierChecker.Check(log, [Put(0, 4096, answeredAt: 12)], [Flush(20, 40)], multiConn: false);

        violations.Should().BeEmpty();
    }

    [Fact]
    public void Flush_on_another_connection_holds_only_with_multi_conn()
    {
        var log = Log(
            (10, "connection=1 Write id=1 offset=0x0 count=0x1000 fua=0 ..."),
            (11, "connection=1 ...Write id=1 return=0"),
            (30, "connection=2 Flush id=1 ..."),
            (31, "connection=2 ...Flush id=1 return=0"));

        FlushBarrierChecker.Check(log, [Put(0, 4096, 12)], [Flush(20, 40)], multiConn: true).Should().BeEmpty();

        var violations = FlushBarrierChecker.Check(log, [Put(0, 4096, 12)], [Flush(20, 40)], multiConn: false);
        violations.Should().ContainSingle().Which.Should()
            .Contain("PUT [0, 4096)").And.Contain("not durable [0, 4096)")
            .And.Contain("no NBD Flush on the same connection")
            .And.Contain("connection=1 Write id=1 offset=0 count=4096");
    }

    [Fact]
    public void Flush_that_started_before_the_write_returned_does_not_count()
    {
        var log = Log(
            (10, "connection=1 Write id=1 offset=0x0 count=0x1000 fua=0 ..."),
            (11, "connection=1 Flush id=2 ..."),
            (12, "connection=1 ...Write id=1 return=0"),
            (13, "connection=1 ...Flush id=2 return=0"));

        var violations = FlushBarrierChecker.Check(log, [Put(0, 4096, 14)], [Flush(15, 40)], multiConn: true);

        violations.Should().ContainSingle().Which.Should().Contain("no NBD Flush on any connection");
    }

    [Fact]
    public void Flush_that_returned_after_the_http_flush_response_does_not_count()
    {
        var log = Log(
            (10, "connection=1 Write id=1 offset=0x0 count=0x1000 fua=0 ..."),
            (11, "connection=1 ...Write id=1 return=0"),
            (30, "connection=1 Flush id=2 ..."),
            (50, "connection=1 ...Flush id=2 return=0"));

        var violations = FlushBarrierChecker.Check(log, [Put(0, 4096, 12)], [Flush(20, 40)], multiConn: false);

        violations.Should().ContainSingle();
    }

    [Fact]
    public void Failed_flush_does_not_count()
    {
        var log = Log(
            (10, "connection=1 Write id=1 offset=0x0 count=0x1000 fua=0 ..."),
            (11, "connection=1 ...Write id=1 return=0"),
            (30, "connection=1 Flush id=2 ..."),
            (31, "connection=1 ...Flush id=2 return=-1 error=EIO"));

        FlushBarrierChecker.Check(log, [Put(0, 4096, 12)], [Flush(20, 40)], multiConn: false).Should().ContainSingle();
    }

    [Fact]
    public void A_write_split_over_connections_needs_a_flush_on_each_without_multi_conn()
    {
        var log = Log(
            (10, "connection=1 Write id=1 offset=0x0 count=0x800 fua=0 ..."),
            (11, "connection=2 Write id=1 offset=0x800 count=0x800 fua=0 ..."),
            (12, "connection=1 ...Write id=1 return=0"),
            (13, "connection=2 ...Write id=1 return=0"),
            (30, "connection=1 Flush id=2 ..."),
            (31, "connection=1 ...Flush id=2 return=0"));

        var violations = FlushBarrierChecker.Check(log, [Put(0, 4096, 14)], [Flush(20, 40)], multiConn: false);

        violations.Should().ContainSingle().Which.Should().Contain("not durable [2048, 4096)")
            .And.Contain("connection=2 Write id=1");
        FlushBarrierChecker.Check(log, [Put(0, 4096, 14)], [Flush(20, 40)], multiConn: true).Should().BeEmpty();
    }

    [Fact]
    public void Bytes_never_written_are_reported()
    {
        var log = Log(
            (10, "connection=1 Write id=1 offset=0x0 count=0x800 fua=0 ..."),
            (11, "connection=1 ...Write id=1 return=0"),
            (12, "connection=1 Write id=2 offset=0x800 count=0x800 fua=0 ..."),
            (13, "connection=1 ...Write id=2 return=-1 error=EIO"),
            (30, "connection=1 Flush id=3 ..."),
            (31, "connection=1 ...Flush id=3 return=0"));

        var violations = FlushBarrierChecker.Check(log, [Put(0, 4096, 14)], [Flush(20, 40)], multiConn: false);

        violations.Should().ContainSingle().Which.Should()
            .Contain("[2048, 4096) never written by a successful NBD Write")
            .And.Contain("return=-1 EIO");
    }

    [Fact]
    public void Writes_answered_after_the_flush_was_sent_are_not_covered_by_it()
    {
        var log = Log(
            (10, "connection=1 Write id=1 offset=0x0 count=0x1000 fua=0 ..."),
            (11, "connection=1 ...Write id=1 return=0"));

        FlushBarrierChecker.Check(log, [Put(0, 4096, 25)], [Flush(20, 40)], multiConn: false).Should().BeEmpty();
    }

    [Fact]
    public void Nbd_write_returning_after_the_http_response_does_not_serve_it()
    {
        // The proxy answered 200 before the NBD write was acknowledged: that is not a durable write.
        var log = Log(
            (10, "connection=1 Write id=1 offset=0x0 count=0x1000 fua=0 ..."),
            (15, "connection=1 ...Write id=1 return=0"),
            (30, "connection=1 Flush id=2 ..."),
            (31, "connection=1 ...Flush id=2 return=0"));

        FlushBarrierChecker.Check(log, [Put(0, 4096, answeredAt: 12)], [Flush(20, 40)], multiConn: false)
            .Should().ContainSingle().Which.Should().Contain("never written");
    }

    [Fact]
    public void Zero_requests_serve_patch_zero_but_not_put()
    {
        var log = Log(
            (10, "connection=1 Zero id=1 offset=0x0 count=0x1000 trim=0 fua=0 fast=0 ..."),
            (11, "connection=1 ...Zero id=1 return=0"),
            (30, "connection=1 Flush id=2 ..."),
            (31, "connection=1 ...Flush id=2 return=0"));
        var zero = new HttpWriteFact(0, 4096, IsZero: true, null, At(12), "PATCH zero #1");

        FlushBarrierChecker.Check(log, [zero], [Flush(20, 40)], multiConn: false).Should().BeEmpty();
        FlushBarrierChecker.Check(log, [Put(0, 4096, 12)], [Flush(20, 40)], multiConn: false).Should().ContainSingle();
    }

    [Fact]
    public void An_earlier_flushed_write_of_the_same_range_does_not_serve_a_later_request()
    {
        var log = Log(
            (10, "connection=1 Write id=1 offset=0x0 count=0x1000 fua=0 ..."),
            (11, "connection=1 ...Write id=1 return=0"),
            (12, "connection=1 Flush id=2 ..."),
            (13, "connection=1 ...Flush id=2 return=0"),
            (20, "connection=2 Write id=1 offset=0x0 count=0x1000 fua=0 ..."),
            (21, "connection=2 ...Write id=1 return=0"),
            (40, "connection=1 Flush id=3 ..."),
            (41, "connection=1 ...Flush id=3 return=0"));
        var second = Put(0, 4096, answeredAt: 22, sentAt: 19);

        FlushBarrierChecker.Check(log, [second], [Flush(30, 50)], multiConn: false).Should().ContainSingle();
        FlushBarrierChecker.Check(log, [second], [Flush(30, 50)], multiConn: true).Should().BeEmpty();
    }

    [Fact]
    public void AssertHolds_throws_with_all_violations()
    {
        var log = Log(
            (10, "connection=1 Write id=1 offset=0x0 count=0x1000 fua=0 ..."),
            (11, "connection=1 ...Write id=1 return=0"));

        var act = () => FlushBarrierChecker.AssertHolds(log, [Put(0, 4096, 12), Put(8192, 10, 12)], [Flush(20, 40)], multiConn: false);

        act.Should().Throw<Xunit.Sdk.XunitException>().WithMessage("Flush barrier violated (2):*PUT [0, 4096)*PUT [8192, 8202)*");
    }

    /// <summary>Runs real nbdkit with the log filter and drives it with qemu-io, one process per "HTTP request":
    /// a process's exit stands for the HTTP response.</summary>
    [Fact]
    public async Task Real_nbdkit_log_is_checked()
    {
        var directory = Directory.CreateTempSubdirectory("nbdkit-log-");
        var socket = Path.Combine(directory.FullName, "nbd.sock");
        var logFile = Path.Combine(directory.FullName, "nbd.log");
        using var nbdkit = Process.Start(new ProcessStartInfo("nbdkit", ["-f", "-U", socket, "--filter=log", "memory", "64M", $"logfile={logFile}"])
        {
            RedirectStandardError = true,
        })!;
        try
        {
            while (!File.Exists(socket))
            {
                nbdkit.HasExited.Should().BeFalse("nbdkit must start: {0}", nbdkit.HasExited ? await nbdkit.StandardError.ReadToEndAsync() : "");
                await Task.Delay(20);
            }

            var uri = $"nbd+unix:///?socket={socket}";

            // W1: a write (qemu-io also flushes when it closes the image; that flush counts as well).
            var w1Sent = DateTimeOffset.Now;
            await QemuIoAsync(uri, "write -P 0xaa 0 64k");
            var w1 = new HttpWriteFact(0, 65536, false, w1Sent, DateTimeOffset.Now, "W1");

            // F1: a flush after W1.
            var f1Sent = DateTimeOffset.Now;
            await QemuIoAsync(uri, "flush");
            var f1 = new HttpFlushFact(f1Sent, DateTimeOffset.Now, "F1");

            // W2 is written after F1, then F2 covers it.
            var w2Sent = DateTimeOffset.Now;
            await QemuIoAsync(uri, "write -z 1M 64k");
            var w2 = new HttpWriteFact(1048576, 65536, true, w2Sent, DateTimeOffset.Now, "W2");
            var f2Sent = DateTimeOffset.Now;
            await QemuIoAsync(uri, "flush");
            var f2 = new HttpFlushFact(f2Sent, DateTimeOffset.Now, "F2");

            nbdkit.Kill();
            await nbdkit.WaitForExitAsync();
            var requests = NbdkitLog.PairRequests(NbdkitLog.ParseFile(logFile));

            requests.Should().Contain(r => r.Action == "Write" && r.Offset == 0 && r.Count == 65536 && r.Succeeded);
            requests.Should().Contain(r => r.Action == "Zero" && r.Offset == 1048576 && r.Count == 65536 && r.Succeeded);
            requests.Select(r => r.Connection).Distinct().Should().HaveCount(4, "each qemu-io run is one NBD connection");

            FlushBarrierChecker.AssertHolds(requests, [w1, w2], [f1, f2], multiConn: false);

            // Lie about the order: claim W2 was answered before F1 was sent. W2's bytes were written after
            // F1's flush, on another connection, so F1 cannot have covered them.
            var lie = w2 with { RequestSent = null, ResponseReceived = f1.RequestSent.AddTicks(-1) };
            var violations = FlushBarrierChecker.Check(requests, [w1, lie], [f1], multiConn: true);
            violations.Should().ContainSingle().Which.Should().Contain("does not cover W2");
        }
        finally
        {
            if (!nbdkit.HasExited)
            {
                nbdkit.Kill();
            }

            directory.Delete(recursive: true);
        }
    }

    private static async Task QemuIoAsync(string uri, string command)
    {
        using var qemuIo = Process.Start(new ProcessStartInfo("qemu-io", ["-f", "raw", "-c", command, uri])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        })!;
        var output = qemuIo.StandardOutput.ReadToEndAsync();
        var error = qemuIo.StandardError.ReadToEndAsync();
        await qemuIo.WaitForExitAsync();
        qemuIo.ExitCode.Should().Be(0, "qemu-io {0}: {1}{2}", command, await output, await error);
    }
}
