using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using ImageioProxy.DataPath;
using ImageioProxy.Http;
using ImageioProxy.Tickets;
using Microsoft.Extensions.Time.Testing;
using NbdClient;

namespace ImageioProxy.Tests.Tickets;

public class NbdUrlTests
{
    [Theory]
    [InlineData("nbd:unix:/run/vdsm/nbd/x.sock", "/run/vdsm/nbd/x.sock", "")]
    [InlineData("nbd:unix:/tmp/s.sock:exportname=sda", "/tmp/s.sock", "sda")]
    public void Unix_forms_parse(string url, string path, string export)
    {
        NbdUrl.TryParse(url, out var endpoint, out _).Should().BeTrue();

        endpoint.Address.Should().BeOfType<UnixDomainSocketEndPoint>().Which.ToString().Should().Be(path);
        endpoint.ExportName.Should().Be(export);
    }

    [Theory]
    [InlineData("nbd:localhost:10809", "localhost", 10809, "")]
    [InlineData("nbd:127.0.0.1:10809:exportname=/x", "127.0.0.1", 10809, "/x")]
    [InlineData("nbd://example.com:10809/sda", "example.com", 10809, "sda")]
    [InlineData("nbd://127.0.0.1:10809//abs", "127.0.0.1", 10809, "/abs")]
    public void Tcp_forms_parse(string url, string host, int port, string export)
    {
        NbdUrl.TryParse(url, out var endpoint, out _).Should().BeTrue();

        (endpoint.Address switch { DnsEndPoint d => (d.Host, d.Port), IPEndPoint i => (i.Address.ToString(), i.Port), _ => ("?", 0) })
            .Should().Be((host, port));
        endpoint.ExportName.Should().Be(export);
    }

    [Theory]
    [InlineData("file:///var/tmp/disk", "Unsupported url scheme: file")]
    [InlineData("nbd:nothing", "Unsupported URL")]
    [InlineData("nbd://host/sda", "Unsupported URL: a port is required")]
    [InlineData("nbd:host:99999", "Unsupported URL")]
    public void Other_urls_are_rejected(string url, string error)
    {
        NbdUrl.TryParse(url, out _, out var message).Should().BeFalse();

        message.Should().Be(error);
    }
}

public class TicketSpecTests
{
    private static (bool Ok, TicketSpec Spec, string Error) Parse(string json)
    {
        using var document = JsonDocument.Parse(json);
        var ok = TicketSpec.TryParse(document.RootElement, 60, out var spec, out var error);
        return (ok, spec, error);
    }

    [Fact]
    public void Defaults_apply_and_write_implies_read()
    {
        var (ok, spec, _) = Parse("""{"uuid": "secret-id", "size": 10, "ops": ["write"], "timeout": 5, "url": "nbd:unix:/s"}""");

        ok.Should().BeTrue();
        spec.InactivityTimeout.Should().Be(60);
        spec.Sparse.Should().BeFalse();
        spec.Dirty.Should().BeFalse();
        spec.MayRead.Should().BeTrue();
        spec.MayWrite.Should().BeTrue();
        spec.TransferId.Should().StartWith("(ticket/").And.NotContain("secret-id", "the uuid is a secret");
    }

    [Theory]
    [InlineData("""{"uuid": 1, "size": 10, "ops": [], "timeout": 5, "url": "nbd:unix:/s"}""", "Invalid value for 'uuid': 1: expecting a <class 'str'> value")]
    [InlineData("""{"uuid": "a", "size": 1.0, "ops": [], "timeout": 5, "url": "nbd:unix:/s"}""", "Invalid value for 'size': 1.0: expecting a <class 'int'> value")]
    [InlineData("""{"uuid": "a", "size": 10, "ops": "read", "timeout": 5, "url": "nbd:unix:/s"}""", "Invalid value for 'ops': 'read': expecting a <class 'list'> value")]
    [InlineData("""{"uuid": "a", "size": 10, "ops": [], "timeout": -5, "url": "nbd:unix:/s"}""", "Invalid value for 'timeout': -5: must be >= 0")]
    [InlineData("""{"uuid": "a", "size": 10, "ops": [], "timeout": 5, "url": "nbd:unix:/s", "inactivity_timeout": -1}""", "Invalid value for 'inactivity_timeout': -1: must be >= 0")]
    [InlineData("""{"uuid": "a", "size": 10, "ops": [], "timeout": 5, "url": "nbd:unix:/s", "dirty": "yes"}""", "Invalid value for 'dirty': 'yes': expecting a <class 'bool'> value")]
    [InlineData("""{"uuid": "", "size": 10, "ops": [], "timeout": 5, "url": "nbd:unix:/s"}""", "Invalid value for 'uuid': '': must not be empty")]
    [InlineData("""{"uuid": "a", "size": 10, "ops": [], "timeout": 5}""", "Required ticket parameter is missing: url")]
    public void Invalid_fields_are_rejected_with_the_reason(string json, string expected)
    {
        var (ok, _, error) = Parse(json);

        ok.Should().BeFalse();
        error.Should().Be(expected);
    }
}

public class TicketTests
{
    private readonly FakeTimeProvider _time = new(DateTimeOffset.UnixEpoch.AddDays(20000));

    private Ticket Create(long timeout = 100, string[]? ops = null)
    {
        var spec = new TicketSpec
        {
            Uuid = "id",
            Size = 1000,
            Ops = ops ?? ["write"],
            Timeout = timeout,
            Url = "nbd:unix:/s",
            Endpoint = new NbdEndpoint(new UnixDomainSocketEndPoint("/s"), ""),
            InactivityTimeout = 60,
            TransferId = "t",
        };
        return new Ticket(spec, _time, new ByteBudget(1024), (_, _) => throw new InvalidOperationException("no backend in unit tests"));
    }

    private long Expires(Ticket ticket)
    {
        using var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream))
        {
            ticket.WriteStatus(writer);
        }
        using var json = JsonDocument.Parse(stream.ToArray());
        return json.RootElement.GetProperty("expires").GetInt64() - _time.GetUtcNow().ToUnixTimeSeconds();
    }

    [Fact]
    public void Ticket_expires_after_its_timeout_and_activity_renews_it()
    {
        var ticket = Create(timeout: 100);

        _time.Advance(TimeSpan.FromSeconds(99));
        ticket.IsExpired.Should().BeFalse();
        ticket.BeginOperation(0).Dispose(); // a completed operation touches the ticket
        _time.Advance(TimeSpan.FromSeconds(99));
        ticket.IsExpired.Should().BeFalse();
        _time.Advance(TimeSpan.FromSeconds(1));

        ticket.IsExpired.Should().BeTrue();
    }

    [Fact]
    public void Touch_does_not_undo_a_longer_extension_but_extend_can_shorten()
    {
        var ticket = Create(timeout: 100);

        ticket.Extend(1000);
        ticket.Touch();
        Expires(ticket).Should().Be(1000);
        ticket.Extend(0);

        ticket.IsExpired.Should().BeTrue();
    }

    [Fact]
    public void Idle_time_is_zero_while_active_and_counts_afterwards()
    {
        var ticket = Create();
        var operation = ticket.BeginOperation(0);
        _time.Advance(TimeSpan.FromSeconds(30));
        ticket.IdleTime.Should().Be(TimeSpan.Zero);
        operation.Dispose();

        _time.Advance(TimeSpan.FromSeconds(7));

        ticket.IdleTime.Should().Be(TimeSpan.FromSeconds(7));
    }

    [Fact]
    public void Transferred_counts_overlapping_and_ongoing_ranges_once()
    {
        var ticket = Create();
        using (var first = ticket.BeginOperation(0)) { first.AddDone(100); }
        using (var overlap = ticket.BeginOperation(50)) { overlap.AddDone(100); }
        var ongoing = ticket.BeginOperation(500);
        ongoing.AddDone(10);

        using var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream))
        {
            ticket.WriteStatus(writer);
        }
        using var json = JsonDocument.Parse(stream.ToArray());

        json.RootElement.GetProperty("transferred").GetInt64().Should().Be(160);
        json.RootElement.GetProperty("active").GetBoolean().Should().BeTrue();
        ongoing.Dispose();
    }

    [Fact]
    public async Task Cancel_fails_new_operations_and_waits_for_ongoing_ones()
    {
        var ticket = Create();
        var operation = ticket.BeginOperation(0);

        var cancel = ticket.CancelAsync(TimeSpan.FromSeconds(60), CancellationToken.None);
        ticket.Canceled.IsCancellationRequested.Should().BeTrue();
        var refused = () => ticket.BeginOperation(0);
        refused.Should().Throw<HttpErrorException>().Which.Status.Should().Be(403);
        cancel.IsCompleted.Should().BeFalse();
        operation.Dispose();

        (await cancel).Should().BeTrue();
    }

    [Fact]
    public async Task Cancel_times_out_when_an_operation_never_ends()
    {
        var ticket = Create();
        using var operation = ticket.BeginOperation(0);

        var cancel = ticket.CancelAsync(TimeSpan.FromSeconds(60), CancellationToken.None);
        _time.Advance(TimeSpan.FromSeconds(61));

        (await cancel).Should().BeFalse();
    }
}

public class RangeSetTests
{
    [Fact]
    public void Union_merges_overlapping_and_adjacent_ranges()
    {
        var set = new RangeSet();
        set.Add(10, 20);
        set.Add(30, 40);
        set.Add(15, 30);
        set.Add(100, 100);
        set.Add(0, 5);

        set.Sum().Should().Be(35);
    }
}

public class ExtentMergeTests
{
    [Fact]
    public void Allocation_and_depth_combine_into_zero_and_hole_with_equal_neighbours_merged()
    {
        List<NbdExtent> allocation = [new(0, 100, 0), new(100, 100, 3), new(200, 100, 3)];
        List<NbdExtent> depth = [new(0, 150, 1), new(150, 150, 0)];

        var merged = DataApi.Merge(0, 300, allocation, depth, dirty: false);

        merged.Should().Equal(new ZeroExtent(0, 100, false, false), new ZeroExtent(100, 50, true, false), new ZeroExtent(150, 150, true, true));
    }

    [Fact]
    public void Missing_contexts_give_one_data_extent()
    {
        DataApi.Merge(10, 90, null, null, dirty: false).Should().Equal(new ZeroExtent(10, 90, false, false));
    }
}
