using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using ImageioProxy.Tests.Support;

namespace ImageioProxy.Tests.Security;

/// <summary>The proxy with short client limits, so that slow and idle clients are cut off within
/// seconds: headers within 2 s, bodies at 4 KiB/s and responses at 1 MiB/s after a 2 s grace period,
/// and idle connections after 2 s. Production defaults are far more lenient (docs/reliability.md).</summary>
public sealed class ClientFaultFixture() : ProxyFixture("raw", DefaultImageSize, new Dictionary<string, string?>
{
    ["Limits:RequestHeadersTimeout"] = "2",
    ["Limits:MinRequestBodyDataRate"] = "4096",
    ["Limits:MinRequestBodyDataRateGracePeriod"] = "2",
    ["Limits:MinResponseDataRate"] = "1048576",
    ["Limits:MinResponseDataRateGracePeriod"] = "2",
    ["Daemon:InactivityTimeout"] = "2",
});

/// <summary>Clients that disconnect, stall, dribble or idle: the server cuts them off, nothing leaks
/// (ticket connections, in-flight bytes and their pooled buffers, NBD connections and requests), and
/// other clients are unaffected. Waits are bounded; no test asserts how long anything took.</summary>
public class ClientFaultTests(ClientFaultFixture fixture) : IClassFixture<ClientFaultFixture>
{
    private const int MiB = 1024 * 1024;
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    private Task<string> AddTicketAsync(long inactivityTimeout = 300)
        => fixture.AddTicketAsync(changes: t => t["inactivity_timeout"] = inactivityTimeout);

    private async Task<Socket> ConnectAsync(int? receiveBuffer = null)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        if (receiveBuffer is int size)
        {
            socket.ReceiveBufferSize = size; // before connecting, so the window stays small
        }
        await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, fixture.RemoteUri.Port));
        return socket;
    }

    /// <summary>Closes with a reset, the way a crashed client or a dropped link looks to the server.</summary>
    private static void Reset(Socket socket)
    {
        socket.LingerState = new LingerOption(true, 0);
        socket.Close();
    }

    private async Task<int> ConnectionsAsync(string id)
    {
        using var json = JsonDocument.Parse(await fixture.Control.GetStringAsync($"/tickets/{id}"));
        return json.RootElement.GetProperty("connections").GetInt32();
    }

    /// <summary>Waits (bounded) until the ticket is quiet, then checks that nothing it used leaked.</summary>
    private async Task AssertNothingLeakedAsync(string id)
    {
        var ticket = fixture.Server.Tickets.Find(id)!;
        var pool = await ticket.GetPoolAsync(CancellationToken.None);
        // A cancelled NBD read is let go at once (its buffer is not reused) and its reply is read and dropped
        // when it comes, so the pool may still count it for a moment after the HTTP request has ended.
        for (var i = 0; i < 1500 && (ticket.ConnectionCount > 0 || ticket.IsActive || ticket.Budget.InUse > 0 || pool.InFlight > 0); i++)
        {
            await Task.Delay(20);
        }
        (await ConnectionsAsync(id)).Should().Be(0, "GET /tickets/{id} connections returns to its value before the client came");
        ticket.IsActive.Should().BeFalse();
        ticket.Budget.InUse.Should().Be(0, "every pooled buffer of the ticket was returned");
        fixture.Server.Tickets.GlobalBudget.InUse.Should().Be(0);
        pool.InFlight.Should().Be(0, "every NBD request of the aborted transfer was answered and dropped");
        pool.ConnectionCount.Should().BeInRange(1, 4, "the pool keeps at most Backend:NbdConnections connections");
    }

    /// <summary>A normal client on a new connection: PUT then GET of the same bytes.</summary>
    private async Task AssertOthersUnaffectedAsync(long offset)
    {
        var id = await AddTicketAsync();
        var data = new byte[MiB];
        new Random((int)(offset / MiB)).NextBytes(data);
        using var client = new HttpClient { BaseAddress = fixture.RemoteUri, Timeout = Bound };
        using var put = new ByteArrayContent(data);
        put.Headers.ContentRange = new System.Net.Http.Headers.ContentRangeHeaderValue(offset, offset + MiB - 1);
        using (var response = await client.PutAsync($"/images/{id}", put))
        {
            response.EnsureSuccessStatusCode();
        }
        using var get = new HttpRequestMessage(HttpMethod.Get, $"/images/{id}");
        get.Headers.Range = new System.Net.Http.Headers.RangeHeaderValue(offset, offset + MiB - 1);
        using var reply = await client.SendAsync(get);
        ((int)reply.StatusCode).Should().Be(206);
        (await reply.Content.ReadAsByteArrayAsync()).Should().Equal(data);
    }

    private static async Task<RawReply> ReadUntilClosedAsync(Socket socket)
    {
        using var deadline = new CancellationTokenSource(Bound);
        return await RawExchange.ReadReplyAsync(socket, deadline.Token);
    }

    [Fact]
    public async Task Client_that_disconnects_mid_put_leaks_nothing_and_loses_no_acknowledged_write()
    {
        var id = await AddTicketAsync();
        var baseline = await ConnectionsAsync(id);
        var acknowledged = new byte[MiB];
        new Random(1).NextBytes(acknowledged);
        var put = await RawExchange.SendAsync(RawExchange.Tcp(fixture.RemoteUri),
            [.. Encoding.ASCII.GetBytes($"PUT /images/{id} HTTP/1.1\r\nHost: test\r\nContent-Length: {MiB}\r\n\r\n"), .. acknowledged], Bound);
        put.Status.Should().Be(200, "the first write is acknowledged");

        using (var socket = await ConnectAsync())
        {
            await socket.SendAsync(Encoding.ASCII.GetBytes($"PUT /images/{id} HTTP/1.1\r\nHost: test\r\nContent-Range: bytes {2 * MiB}-{18 * MiB - 1}/*\r\nContent-Length: {16 * MiB}\r\n\r\n"));
            var junk = new byte[MiB];
            for (var i = 0; i < 5; i++)
            {
                await socket.SendAsync(junk);
            }
            var ticket = fixture.Server.Tickets.Find(id)!;
            for (var i = 0; i < 500 && !ticket.IsActive; i++)
            {
                await Task.Delay(10);
            }
            ticket.IsActive.Should().BeTrue("the PUT is running when the client goes away");
            Reset(socket);
        }

        await AssertNothingLeakedAsync(id);
        (await ConnectionsAsync(id)).Should().Be(baseline);
        (await fixture.ReadExportAsync()).AsSpan(0, MiB).ToArray().Should().Equal(acknowledged, "an acknowledged write survives a later aborted one");
        await AssertOthersUnaffectedAsync(40L * MiB);
    }

    [Fact]
    public async Task Client_that_disconnects_mid_get_leaks_nothing()
    {
        var id = await AddTicketAsync();

        using (var socket = await ConnectAsync(receiveBuffer: 16 * 1024))
        {
            await socket.SendAsync(Encoding.ASCII.GetBytes($"GET /images/{id} HTTP/1.1\r\nHost: test\r\n\r\n"));
            var buffer = new byte[64 * 1024];
            var received = 0;
            using var deadline = new CancellationTokenSource(Bound);
            while (received < 256 * 1024)
            {
                var n = await socket.ReceiveAsync(buffer, SocketFlags.None, deadline.Token);
                n.Should().BePositive("the download is streaming");
                received += n;
            }
            fixture.Server.Tickets.Find(id)!.IsActive.Should().BeTrue("64 MiB cannot all be in socket buffers yet");
            Reset(socket);
        }

        await AssertNothingLeakedAsync(id);
        await AssertOthersUnaffectedAsync(41L * MiB);
    }

    [Fact]
    public async Task Reader_that_stops_reading_a_get_is_cut_off_by_the_minimum_response_rate()
    {
        var id = await AddTicketAsync();
        using var socket = await ConnectAsync(receiveBuffer: 16 * 1024);
        await socket.SendAsync(Encoding.ASCII.GetBytes($"GET /images/{id} HTTP/1.1\r\nHost: test\r\n\r\n"));
        var ticket = fixture.Server.Tickets.Find(id)!;
        for (var i = 0; i < 500 && !ticket.IsActive; i++)
        {
            await Task.Delay(10);
        }

        // Never read: Kestrel aborts the response once the client falls below Limits:MinResponseDataRate.
        for (var i = 0; i < 1500 && ticket.IsActive; i++)
        {
            await Task.Delay(20);
        }

        ticket.IsActive.Should().BeFalse("a stalled reader must not hold the download forever");
        await AssertNothingLeakedAsync(id);
    }

    [Fact]
    public async Task Body_that_stops_before_its_content_length_is_408_and_writes_nothing()
    {
        var id = await AddTicketAsync();
        var before = (await fixture.ReadExportAsync()).AsSpan(44 * MiB, 4096).ToArray();
        using var socket = await ConnectAsync();
        await socket.SendAsync(Encoding.ASCII.GetBytes($"PUT /images/{id} HTTP/1.1\r\nHost: test\r\nContent-Range: bytes {44 * MiB}-{45 * MiB - 1}/*\r\nContent-Length: {MiB}\r\n\r\n"));
        await socket.SendAsync(Enumerable.Repeat((byte)0x5a, 1000).ToArray());

        // ...and nothing more, without closing: Limits:MinRequestBodyDataRate ends it.
        var reply = await ReadUntilClosedAsync(socket);

        reply.Status.Should().Be(408, reply.ToString());
        reply.Header("connection").Should().Be("close");
        await AssertNothingLeakedAsync(id);
        (await fixture.ReadExportAsync()).AsSpan(44 * MiB, 4096).ToArray().Should().Equal(before, "the incomplete chunk is not written");
    }

    [Fact]
    public async Task Body_that_dribbles_is_cut_off_and_others_are_unaffected()
    {
        var id = await AddTicketAsync();
        using var socket = await ConnectAsync();
        await socket.SendAsync(Encoding.ASCII.GetBytes($"PUT /images/{id} HTTP/1.1\r\nHost: test\r\nContent-Range: bytes {46 * MiB}-{47 * MiB - 1}/*\r\nContent-Length: {MiB}\r\n\r\n"));
        using var stop = new CancellationTokenSource(Bound);
        var dribble = Task.Run(async () =>
        {
            // One byte every 100 ms: 10 B/s, far below the 4 KiB/s minimum.
            try
            {
                while (!stop.IsCancellationRequested)
                {
                    await socket.SendAsync(new byte[] { 1 }, SocketFlags.None, stop.Token);
                    await Task.Delay(100, stop.Token);
                }
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException)
            {
                // The server closed the connection: what we wait for.
            }
        });

        await AssertOthersUnaffectedAsync(48L * MiB);
        var reply = await ReadUntilClosedAsync(socket);
        await stop.CancelAsync();
        await dribble;

        reply.Status.Should().Be(408, reply.ToString());
        await AssertNothingLeakedAsync(id);
    }

    [Fact]
    public async Task Headers_that_dribble_are_cut_off_and_others_are_unaffected()
    {
        var sockets = new List<Socket>();
        using var stop = new CancellationTokenSource(Bound);
        var dribblers = new List<Task<RawReply>>();
        for (var i = 0; i < 20; i++)
        {
            var socket = await ConnectAsync();
            sockets.Add(socket);
            dribblers.Add(Task.Run(async () =>
            {
                var reading = RawExchange.ReadReplyAsync(socket, stop.Token);
                try
                {
                    await socket.SendAsync(Encoding.ASCII.GetBytes("GET /images/x HTTP/1.1\r\nHost: test\r\nX-Slow: "), SocketFlags.None, stop.Token);
                    while (!reading.IsCompleted)
                    {
                        await socket.SendAsync("a"u8.ToArray(), SocketFlags.None, stop.Token);
                        await Task.Delay(200, stop.Token);
                    }
                }
                catch (Exception e) when (e is SocketException or OperationCanceledException)
                {
                }
                return await reading;
            }));
        }
        try
        {
            await AssertOthersUnaffectedAsync(50L * MiB);
            var replies = await Task.WhenAll(dribblers);

            foreach (var reply in replies)
            {
                reply.TimedOut.Should().BeFalse("Limits:RequestHeadersTimeout cuts off a client that never finishes its headers");
                if (reply.Status != 0)
                {
                    reply.Status.Should().Be(408, reply.ToString());
                }
            }
        }
        finally
        {
            sockets.ForEach(s => s.Dispose());
        }
    }

    [Fact]
    public async Task Keep_alive_connection_idle_within_the_ticket_inactivity_timeout_stays_usable()
    {
        // virt-v2v opens its connections, then converts for minutes before sending (imageio issue #14):
        // an idle connection bound to a ticket lives as long as the ticket's inactivity_timeout says,
        // here 300 s, well past Daemon:InactivityTimeout (2 s) and Kestrel's 1 s heartbeat.
        var id = await AddTicketAsync(inactivityTimeout: 300);
        using var socket = await ConnectAsync();
        using var deadline = new CancellationTokenSource(Bound);
        await socket.SendAsync(Encoding.ASCII.GetBytes($"OPTIONS /images/{id} HTTP/1.1\r\nHost: test\r\n\r\n"));
        (await RawExchange.ReadReplyAsync(socket, deadline.Token)).Status.Should().Be(200);

        await Task.Delay(TimeSpan.FromSeconds(4));
        await socket.SendAsync(Encoding.ASCII.GetBytes($"GET /images/{id}/extents HTTP/1.1\r\nHost: test\r\n\r\n"));
        var reply = await RawExchange.ReadReplyAsync(socket, deadline.Token);

        reply.Status.Should().Be(200, "the same connection still serves requests: {0}", reply);
        (await ConnectionsAsync(id)).Should().Be(1);
    }

    [Fact]
    public async Task Idle_connections_are_closed_and_do_not_block_others()
    {
        var id = await AddTicketAsync(inactivityTimeout: 2);
        var baseline = await ConnectionsAsync(id);
        var sockets = new List<Socket>();
        try
        {
            // Never a byte: closed after Daemon:InactivityTimeout.
            for (var i = 0; i < 20; i++)
            {
                sockets.Add(await ConnectAsync());
            }
            // One request, then idle: bound to the ticket, closed after its inactivity_timeout.
            var bound = await ConnectAsync();
            sockets.Add(bound);
            await bound.SendAsync(Encoding.ASCII.GetBytes($"OPTIONS /images/{id} HTTP/1.1\r\nHost: test\r\n\r\n"));
            using (var deadline = new CancellationTokenSource(Bound))
            {
                (await RawExchange.ReadReplyAsync(bound, deadline.Token)).Status.Should().Be(200);
            }
            (await ConnectionsAsync(id)).Should().Be(baseline + 1);

            await AssertOthersUnaffectedAsync(52L * MiB);
            var closed = await Task.WhenAll(sockets.Select(ReadUntilClosedAsync));

            closed.Should().OnlyContain(r => r.Closed && !r.TimedOut, "every idle connection is closed by the server");
            await AssertNothingLeakedAsync(id);
            (await ConnectionsAsync(id)).Should().Be(baseline);
        }
        finally
        {
            sockets.ForEach(s => s.Dispose());
        }
    }
}
