using ImageioProxy.Tests.Support;
using Microsoft.Extensions.Time.Testing;

namespace ImageioProxy.Tests.Hosting;

/// <summary>The proxy on a fake clock, with at most 2 connections per ticket.</summary>
public sealed class FakeClockProxyFixture : ProxyFixture
{
    public FakeClockProxyFixture() : this(new FakeTimeProvider(DateTimeOffset.UtcNow)) { }

    private FakeClockProxyFixture(FakeTimeProvider time)
        : base("raw", settings: new Dictionary<string, string?> { ["Daemon:MaxConnections"] = "2", ["Daemon:InactivityTimeout"] = "60" }, time: time)
        => Time = time;

    public FakeTimeProvider Time { get; }
}

/// <summary>Per-ticket inactivity timeouts and the per-ticket connection limit (imageio-api.md §2, §6.4).</summary>
public class ConnectionTrackerTests(FakeClockProxyFixture fixture) : IClassFixture<FakeClockProxyFixture>
{
    private static readonly TimeSpan Short = TimeSpan.FromMilliseconds(300);
    private static readonly TimeSpan Long = TimeSpan.FromSeconds(10);

    private async Task<RawHttp> OptionsAsync(string id, int expectedStatus = 200)
    {
        var http = await RawHttp.ConnectAsync(fixture.RemoteUri);
        await http.SendAsync($"OPTIONS /images/{id} HTTP/1.1\nHost: test\n\n");
        (await http.ReadResponseAsync()).Status.Should().Be(expectedStatus);
        // The request is marked as ended (its last activity) just after the response went out: wait for
        // that before the test moves the clock, or the end would be stamped with the moved time.
        for (var i = 0; i < 500 && !fixture.Server.Connections.AllIdle; i++)
        {
            await Task.Delay(10);
        }
        return http;
    }

    [Fact]
    public async Task Connection_that_used_a_ticket_is_closed_after_the_ticket_inactivity_timeout()
    {
        var id = await fixture.AddTicketAsync(changes: t => t["inactivity_timeout"] = 30);
        await using var http = await OptionsAsync(id);

        fixture.Time.Advance(TimeSpan.FromSeconds(29));
        (await http.IsClosedByServerAsync(Short)).Should().BeFalse();
        fixture.Time.Advance(TimeSpan.FromSeconds(2));

        (await http.IsClosedByServerAsync(Long)).Should().BeTrue();
    }

    [Fact]
    public async Task Idle_connection_is_kept_while_another_request_of_its_ticket_runs()
    {
        var id = await fixture.AddTicketAsync(changes: t => t["inactivity_timeout"] = 30);
        await using var http = await OptionsAsync(id);
        var operation = fixture.Server.Tickets.Find(id)!.BeginOperation(0);
        try
        {
            fixture.Time.Advance(TimeSpan.FromSeconds(100));
            (await http.IsClosedByServerAsync(Short)).Should().BeFalse();
        }
        finally
        {
            operation.Dispose();
        }
        fixture.Time.Advance(TimeSpan.FromSeconds(31));

        (await http.IsClosedByServerAsync(Long)).Should().BeTrue();
    }

    [Fact]
    public async Task Connection_without_a_ticket_obeys_the_daemon_inactivity_timeout()
    {
        await using var http = await RawHttp.ConnectAsync(fixture.RemoteUri);
        for (var i = 0; i < 100 && fixture.Server.Connections.Count == 0; i++)
        {
            await Task.Delay(10);
        }

        fixture.Time.Advance(TimeSpan.FromSeconds(59));
        (await http.IsClosedByServerAsync(Short)).Should().BeFalse();
        fixture.Time.Advance(TimeSpan.FromSeconds(2));

        (await http.IsClosedByServerAsync(Long)).Should().BeTrue();
    }

    [Fact]
    public async Task Connections_beyond_the_limit_get_503_until_one_closes()
    {
        var id = await fixture.AddTicketAsync(changes: t => t["inactivity_timeout"] = 3600);
        var first = await OptionsAsync(id);
        await using var second = await OptionsAsync(id);

        await using (var third = await RawHttp.ConnectAsync(fixture.RemoteUri))
        {
            await third.SendAsync($"OPTIONS /images/{id} HTTP/1.1\nHost: test\n\n");
            var refused = await third.ReadResponseAsync();
            refused.Status.Should().Be(503);
            refused.Header("connection").Should().Be("close");
        }
        await first.DisposeAsync();
        var ticket = fixture.Server.Tickets.Find(id)!;
        for (var i = 0; i < 200 && ticket.ConnectionCount > 1; i++)
        {
            await Task.Delay(10);
        }

        await using var fourth = await OptionsAsync(id);
        ticket.ConnectionCount.Should().Be(2);
    }
}
