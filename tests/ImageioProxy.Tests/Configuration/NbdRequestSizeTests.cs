using ImageioProxy.Tests.Reliability;
using ImageioProxy.Tests.Support;
using TestSupport;

namespace ImageioProxy.Tests.Configuration;

/// <summary>Backend:NbdRequestSize and Backend:SpliceRequestSize reach the NBD pool: what qemu-nbd (here
/// nbdkit's log filter) receives.</summary>
public partial class NbdRequestSizeTests
{
    private const int MiB = 1 << 20;

    [Fact]
    public async Task A_1_MiB_chunk_goes_to_the_server_as_requests_of_at_most_NbdRequestSize()
    {
        using var directory = TempDirectory.Create("reqsize");
        await using var nbdkit = await NbdkitServer.StartAsync(["memory", "64M"], new NbdkitOptions { Filters = ["log"] });
        await using var proxy = await ChildProxy.StartAsync(directory.Path, new Dictionary<string, string>
        {
            ["Backend:NbdRequestSize"] = "131072",
        });
        var ticket = ReliabilityTickets.For(nbdkit.ImageioUrl, ["read", "write"], size: 64 * MiB);
        await proxy.AddTicketAsync(ticket);
        var id = (string)ticket["uuid"]!;
        using var client = new HttpClient();
        var http = new ReliabilityHttp(client, proxy.RemoteUri);
        var data = ReliabilityHttp.RandomBytes(MiB, 41);

        var put = await http.PutAsync(id, 4 * MiB, data, flush: false);
        var get = await http.GetAsync(id, 4 * MiB, MiB);

        put.Status.Should().Be(200, put.ToString());
        get.Status.Should().Be(206, get.ToString());
        get.Body.Should().Equal(data);
        var lines = await nbdkit.ReadLogLinesAsync();
        foreach (var op in new[] { "Write", "Read" })
        {
            var counts = lines.Select(l => Request().Match(l)).Where(m => m.Success && m.Groups[1].Value == op)
                .Select(m => Convert.ToInt64(m.Groups[2].Value, 16)).ToList();
            counts.Should().HaveCount(8, $"each {op} of the 1 MiB chunk is cut into 128 KiB requests")
                .And.OnlyContain(c => c == 131072);
        }
    }

    [Fact]
    public async Task By_default_a_spliced_put_reaches_the_server_as_requests_of_at_most_120_KiB()
    {
        using var directory = TempDirectory.Create("reqsize");
        await using var nbdkit = await NbdkitServer.StartAsync(["memory", "64M"], new NbdkitOptions { Filters = ["log"] });
        await using var proxy = await ChildProxy.StartAsync(directory.Path, new Dictionary<string, string>());
        var ticket = ReliabilityTickets.For(nbdkit.ImageioUrl, ["read", "write"], size: 64 * MiB);
        await proxy.AddTicketAsync(ticket);
        var id = (string)ticket["uuid"]!;
        using var client = new HttpClient();
        var http = new ReliabilityHttp(client, proxy.RemoteUri);
        // Large enough to be spliced on plain HTTP (Http:MaxRequestBufferSize plus two chunks), unaligned.
        var data = ReliabilityHttp.RandomBytes(8 * MiB + 12345, 42);

        var put = await http.PutAsync(id, 3 * MiB, data, flush: false);
        var get = await http.GetAsync(id, 3 * MiB, data.Length);

        put.Status.Should().Be(200, put.ToString());
        get.Body.Should().Equal(data);
        var writes = (await nbdkit.ReadLogLinesAsync()).Select(l => Request().Match(l)).Where(m => m.Success && m.Groups[1].Value == "Write")
            .Select(m => Convert.ToInt64(m.Groups[2].Value, 16)).ToList();
        writes.Sum().Should().Be(data.Length, "every byte was written once");
        // What Kestrel buffered before splicing began goes as whole chunks (Backend:NbdRequestSize 0).
        writes.Where(c => c <= 120 * 1024).Sum().Should().BeGreaterThan(data.Length / 2, "the spliced rest went as Backend:SpliceRequestSize requests");
        writes.Should().OnlyContain(c => c <= MiB);
    }

    [System.Text.RegularExpressions.GeneratedRegex(@"\b(Write|Read) id=\d+ offset=0x[0-9a-f]+ count=0x([0-9a-f]+)")]
    private static partial System.Text.RegularExpressions.Regex Request();
}
