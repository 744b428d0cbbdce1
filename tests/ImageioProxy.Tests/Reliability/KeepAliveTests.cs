using ImageioProxy.Tests.Support;

namespace ImageioProxy.Tests.Reliability;

/// <summary>Clients keep their connections between requests (virt-v2v's pool, imageio's client): an idle
/// keep-alive connection must stay open until the ticket's inactivity_timeout, not be dropped by Kestrel.</summary>
[Collection(ReliabilityCollection.Name)]
public sealed class KeepAliveTests(FaultProxyFixture fixture) : IClassFixture<FaultProxyFixture>
{
    [Fact]
    public async Task Idle_keep_alive_connection_is_still_open_and_usable_after_three_seconds()
    {
        var id = await fixture.AddTicketAsync();
        await using var connection = await RawHttp.ConnectAsync(fixture.RemoteUri);
        await connection.SendAsync($"OPTIONS /images/{id} HTTP/1.1\nHost: localhost\n\n");
        (await connection.ReadResponseAsync().WaitAsync(ReliabilityHttp.Bound)).Status.Should().Be(200);

        // Kestrel's heartbeat is 1 s: three of them with InfiniteTimeSpan closed the connection.
        var closed = await connection.IsClosedByServerAsync(TimeSpan.FromSeconds(3));
        await connection.SendAsync($"GET /images/{id} HTTP/1.1\nHost: localhost\nRange: bytes=0-4095\n\n");
        var reply = await connection.ReadResponseAsync().WaitAsync(ReliabilityHttp.Bound);

        closed.Should().BeFalse("the inactivity timeout is the ticket's (60 s here), not Kestrel's");
        reply.Status.Should().Be(206);
        reply.Body.Should().HaveCount(4096);
    }
}
