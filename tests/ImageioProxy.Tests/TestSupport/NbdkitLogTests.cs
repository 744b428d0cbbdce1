using TestSupport;

namespace ImageioProxy.Tests.TestSupport;

public class NbdkitLogTests
{
    // Lines copied from real nbdkit 1.32.5 logs (memory plugin; error filter for the EIO).
    private const string RealLines = """
        2026-11-25 12:25:21.622689 Ready thread_model=3
        2026-11-25 12:25:22.626884 Preconnect id=1 readonly=0 ...
        2026-11-25 12:25:22.626902 ...Preconnect id=1 return=0
        2026-11-25 12:25:22.627153 connection=1 Connect export="" tls=0 size=0x4000000 minsize=0x0 prefsize=0x0 maxsize=0x0 write=1 flush=1 rotational=0 trim=1 zero=2 fua=2 extents=1 cache=2 fast_zero=1
        2026-11-25 12:25:22.627544 connection=1 Write id=1 offset=0x0 count=0x10000 fua=1 ...
        2026-11-25 12:25:22.627634 connection=1 ...Write id=1 return=0
        2026-11-25 12:25:22.627734 connection=1 Zero id=2 offset=0x100000 count=0x10000 trim=0 fua=0 fast=0 ...
        2026-11-25 12:25:22.627745 connection=1 ...Zero id=2 return=0
        2026-11-25 12:25:27.320494 connection=1 Write id=3 offset=0x200000 count=0x1000 fua=0 ...
        2026-11-25 12:25:27.320566 connection=1 ...Write id=3 return=-1 error=EIO
        2026-11-25 12:25:27.329202 connection=2 Extents id=1 offset=0x0 count=0x800000 req_one=1 ...
        2026-11-25 12:25:27.329251 connection=2 ...Extents id=1 extents=(0x0 0x800000 "hole,zero") return=0
        2026-11-25 12:25:27.330000 connection=1 Flush id=4 ...
        2026-11-25 12:25:27.330002 connection=1 ...Flush id=4 return=0
        2026-11-25 12:25:27.331380 connection=2 Disconnect transactions=1
        """;

    [Fact]
    public void Parse_reads_every_kind_of_line()
    {
        var events = NbdkitLog.Parse(RealLines, TimeZoneInfo.Utc);

        events.Should().HaveCount(15);
        events.Select(e => e.Sequence).Should().Equal(Enumerable.Range(0, 15));

        events[0].Should().Match<NbdkitLogEvent>(e => e.Action == "Ready" && e.Phase == NbdkitLogPhase.Event && e.Connection == null);
        events[0].Timestamp.Should().Be(new DateTimeOffset(2026, 11, 25, 12, 25, 21, TimeSpan.Zero).AddTicks(6226890));

        events[1].Should().Match<NbdkitLogEvent>(e => e.Action == "Preconnect" && e.Phase == NbdkitLogPhase.Start && e.Id == 1 && e.Connection == null);

        var connect = events[3];
        connect.Action.Should().Be("Connect");
        connect.Phase.Should().Be(NbdkitLogPhase.Event);
        connect.Connection.Should().Be(1);
        connect.Fields["export"].Should().BeEmpty();
        connect.Fields["size"].Should().Be("0x4000000");

        var write = events[4];
        write.Should().Match<NbdkitLogEvent>(e => e.Action == "Write" && e.Phase == NbdkitLogPhase.Start && e.Id == 1 && e.Connection == 1);
        write.Offset.Should().Be(0);
        write.Count.Should().Be(0x10000);
        write.Fua.Should().BeTrue();

        events[5].Should().Match<NbdkitLogEvent>(e => e.Action == "Write" && e.Phase == NbdkitLogPhase.Return && e.ReturnValue == 0 && e.Error == null);
        events[6].Offset.Should().Be(0x100000);
        events[6].Fua.Should().BeFalse();
        events[9].Should().Match<NbdkitLogEvent>(e => e.ReturnValue == -1 && e.Error == "EIO");
        events[11].Fields["extents"].Should().Be("(0x0 0x800000 \"hole,zero\")");
        events[11].ReturnValue.Should().Be(0);
        events[14].Should().Match<NbdkitLogEvent>(e => e.Action == "Disconnect" && e.Fields["transactions"] == "1");
    }

    [Fact]
    public void PairRequests_matches_calls_and_returns_per_connection()
    {
        var requests = NbdkitLog.PairRequests(NbdkitLog.Parse(RealLines, TimeZoneInfo.Utc));

        // Preconnect has no connection and is not a request on one.
        requests.Select(r => $"{r.Connection}:{r.Action}:{r.Id}:{r.Succeeded}").Should().Equal(
            "1:Write:1:True", "1:Zero:2:True", "1:Write:3:False", "2:Extents:1:True", "1:Flush:4:True");
        requests[0].Should().Match<NbdkitRequest>(r => r.Offset == 0 && r.Count == 0x10000 && r.End == 0x10000 && r.IsWriteLike);
        requests[2].Return!.Error.Should().Be("EIO");
        requests[3].IsWriteLike.Should().BeFalse();
        requests[4].Start.Sequence.Should().Be(12);
        requests[4].Return!.Sequence.Should().Be(13);
    }

    [Fact]
    public void PairRequests_handles_interleaved_requests_and_missing_returns()
    {
        const string log = """
            2026-01-01 00:00:00.000001 connection=1 Write id=1 offset=0x0 count=0x200 fua=0 ...
            2026-01-01 00:00:00.000002 connection=2 Write id=1 offset=0x200 count=0x200 fua=0 ...
            2026-01-01 00:00:00.000003 connection=1 Write id=2 offset=0x400 count=0x200 fua=0 ...
            2026-01-01 00:00:00.000004 connection=1 ...Write id=2 return=0
            2026-01-01 00:00:00.000005 connection=2 ...Write id=1 return=0
            """;

        var requests = NbdkitLog.PairRequests(NbdkitLog.Parse(log, TimeZoneInfo.Utc));

        requests.Select(r => (r.Connection, r.Id, r.Offset, r.Return?.Sequence)).Should().Equal(
            (1L, 1L, 0L, (int?)null), (2L, 1L, 0x200L, 4), (1L, 2L, 0x400L, 3));
        requests[0].Succeeded.Should().BeFalse();
        requests[0].ToString().Should().Contain("never returned");
    }

    [Theory]
    [InlineData("connection=1 Write id=1 ...", "no timestamp")]
    [InlineData("2026-01-01 00:00:00.000001", "no timestamp")]
    [InlineData("2026-01-01 00:00:00.000001 connection=1", "no action")]
    [InlineData("2026-01-01 00:00:00.000001 connection=1 Write id=1 offset=\"0x0 ...", "unbalanced")]
    [InlineData("2026-01-01 00:00:00.000001 connection=1 Write id=1 junk ...", "bad field 'junk'")]
    public void Parse_rejects_malformed_lines_with_the_line_number(string line, string reason)
    {
        var act = () => NbdkitLog.Parse("2026-01-01 00:00:00.000000 Ready thread_model=3\n" + line);

        act.Should().Throw<FormatException>().WithMessage($"nbdkit log line 2: *{reason}*");
    }

    [Fact]
    public void PairRequests_rejects_a_return_without_a_call()
    {
        var events = NbdkitLog.Parse("2026-01-01 00:00:00.000001 connection=3 ...Flush id=9 return=0", TimeZoneInfo.Utc);

        var act = () => NbdkitLog.PairRequests(events);

        act.Should().Throw<FormatException>().WithMessage("*return of id 9 on connection 3 that never started*");
    }
}
