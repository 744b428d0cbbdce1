using ImageioProxy.Tests.Support;

namespace ImageioProxy.Tests.Security;

/// <summary>Tickets are the only authorization (imageio-api.md §5.3): a read ticket refuses writes, an
/// expired or removed ticket refuses everything, always 403 and the image untouched.</summary>
public class AuthorizationTests(SmallImageFixture fixture) : IClassFixture<SmallImageFixture>
{
    private const string Forbidden = "You are not allowed to access this resource: ";
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    private static readonly string[] Writes =
    [
        "PUT /images/{id} HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
        "PUT /images/{id} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "PATCH /images/{id} HTTP/1.1\r\nHost: t\r\nContent-Length: 27\r\n\r\n{\"op\": \"zero\", \"size\": 100}",
        "PATCH /images/{id} HTTP/1.1\r\nHost: t\r\nContent-Length: 15\r\n\r\n{\"op\": \"flush\"}",
    ];

    private static readonly string[] Reads =
    [
        "OPTIONS /images/{id} HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /images/{id} HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /images/{id} HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9\r\n\r\n",
        "GET /images/{id}/extents HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /images/{id}/checksum HTTP/1.1\r\nHost: t\r\n\r\n",
    ];

    private async Task<List<(string Request, RawReply Reply)>> SendAllAsync(string id, IEnumerable<string> requests)
    {
        var replies = new List<(string, RawReply)>();
        foreach (var request in requests)
        {
            replies.Add((request, await RawExchange.SendAsync(RawExchange.Tcp(fixture.RemoteUri), request.Replace("{id}", id, StringComparison.Ordinal), Bound)));
        }
        return replies;
    }

    [Fact]
    public async Task Read_ticket_refuses_every_write_with_403_and_allows_reads()
    {
        var id = await fixture.AddTicketAsync(["read"], t => t["transfer_id"] = "read-only");
        var before = await fixture.ImageHashAsync();

        var writes = await SendAllAsync(id, Writes);
        var reads = await SendAllAsync(id, Reads);

        foreach (var (request, reply) in writes)
        {
            reply.Status.Should().Be(403, request);
            reply.Body.Should().Be(Forbidden + "Transfer=read-only forbids write\n", request);
            reply.Header("connection").Should().Be("close");
        }
        reads.Should().OnlyContain(r => r.Reply.Status == 200 || r.Reply.Status == 206);
        (await fixture.ImageHashAsync()).Should().Be(before);
    }

    [Fact]
    public async Task Expired_ticket_refuses_everything_with_403()
    {
        var id = await fixture.AddTicketAsync(changes: t => { t["timeout"] = 0; t["transfer_id"] = "expired"; });
        var before = await fixture.ImageHashAsync();

        var replies = await SendAllAsync(id, [.. Writes, .. Reads]);

        foreach (var (request, reply) in replies)
        {
            reply.Status.Should().Be(403, request);
            reply.Body.Should().Be(Forbidden + "Transfer=expired expired\n", request);
        }
        (await fixture.ImageHashAsync()).Should().Be(before);
    }

    [Fact]
    public async Task Removed_ticket_refuses_everything_with_403_even_on_an_open_connection()
    {
        var id = await fixture.AddTicketAsync();
        await using var open = await RawHttp.ConnectAsync(fixture.RemoteUri);
        await open.SendAsync($"OPTIONS /images/{id} HTTP/1.1\nHost: t\n\n");
        (await open.ReadResponseAsync()).Status.Should().Be(200);
        var before = await fixture.ImageHashAsync();

        await fixture.RemoveTicketAsync(id);
        await open.SendAsync($"PUT /images/{id} HTTP/1.1\nHost: t\nContent-Length: 3\n\nabc");
        var onOpen = await open.ReadResponseAsync();
        var replies = await SendAllAsync(id, [.. Writes, .. Reads]);

        onOpen.Status.Should().Be(403);
        onOpen.Text.Should().Be(Forbidden + "No such ticket\n", "the id is not echoed: it is a secret");
        foreach (var (request, reply) in replies)
        {
            reply.Status.Should().Be(403, request);
            reply.Body.Should().Be(Forbidden + "No such ticket\n", request);
        }
        (await fixture.ImageHashAsync()).Should().Be(before);
    }
}
