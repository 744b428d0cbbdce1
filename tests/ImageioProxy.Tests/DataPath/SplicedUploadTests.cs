using System.Diagnostics.Metrics;
using System.Net.Sockets;
using System.Text;
using ImageioProxy.Observability;
using ImageioProxy.Tests.Support;
using Microsoft.Extensions.DependencyInjection;

namespace ImageioProxy.Tests.DataPath;

/// <summary>Spliced PUTs (Http:SpliceUploads, and Http:SpliceLocalUploads for the unix socket): the body goes
/// from the client's socket to qemu-nbd by splice(2).
/// Real curl, real qemu-nbd; the proxy's own counter proves which path a PUT took.</summary>
public sealed class SplicedUploadTests(SpliceFixture fixture) : IClassFixture<SpliceFixture>
{
    private const int MiB = 1024 * 1024;

    [Fact]
    public async Task A_curl_put_over_plain_http_is_spliced_and_lands_byte_exact()
    {
        var spliced = await PutWholeImageAsync(fixture, seed: 41, id => [fixture.ImageUrl(id)]);

        // What Kestrel holds when splicing starts (a few MiB: its threshold past a mark that moves while it
        // waits) is copied; the rest is spliced.
        spliced.Should().BeInRange(fixture.ImageSize / 2, fixture.ImageSize);
    }

    [Fact]
    public async Task A_curl_put_over_the_unix_socket_is_spliced_and_lands_byte_exact()
    {
        var spliced = await PutWholeImageAsync(fixture, seed: 42, id => ["--unix-socket", fixture.LocalSocket, $"http://localhost/images/{id}"]);

        spliced.Should().BeInRange(fixture.ImageSize / 2, fixture.ImageSize);
    }

    /// <summary>A curl PUT of a whole-image source to <paramref name="target"/>, checked byte for byte through
    /// qemu-nbd; returns how many of its bytes the proxy spliced.</summary>
    internal static async Task<long> PutWholeImageAsync(ProxyFixture fixture, int seed, Func<string, string[]> target)
    {
        var id = await fixture.AddTicketAsync();
        var source = fixture.CreateSourceFile(fixture.ImageSize, seed);
        using var spliced = new SplicedBytes(fixture);

        var put = await fixture.CurlAsync(["-X", "PUT", "--upload-file", source, .. target(id)]);

        put.Status.Should().Be(200, put.Text);
        (await fixture.CompareAsync(source)).ExitCode.Should().Be(0);
        return spliced.Total;
    }

    [Fact]
    public async Task A_request_pipelined_behind_a_spliced_body_at_an_unaligned_offset_is_served_on_the_same_connection()
    {
        var id = await fixture.AddTicketAsync();
        const long Offset = 5 * MiB + 12345;
        var body = Random(16 * MiB + 777, seed: 43);
        using var spliced = new SplicedBytes(fixture);
        await using var http = await RawHttp.ConnectAsync(fixture.RemoteUri);
        var put = Encoding.ASCII.GetBytes(
            $"PUT /images/{id}?flush=n HTTP/1.1\r\nHost: test\r\nContent-Length: {body.Length}\r\n" +
            $"Content-Range: bytes {Offset}-{Offset + body.Length - 1}/*\r\n\r\n");
        var patch = Encoding.ASCII.GetBytes(
            $"PATCH /images/{id} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{{\"op\":\"flush\"}}");

        // One stream: the next request's bytes follow the body at once, so they sit in the socket behind it.
        await http.SendAsync([.. put, .. body, .. patch]);
        var putResponse = await http.ReadResponseAsync();
        var patchResponse = await http.ReadResponseAsync();

        putResponse.Status.Should().Be(200, putResponse.Text);
        patchResponse.Status.Should().Be(200, patchResponse.Text);
        spliced.Total.Should().BePositive("the body was large enough to splice");
        var export = await fixture.ReadExportAsync();
        export[(int)Offset..((int)Offset + body.Length)].Should().Equal(body, "the spliced body lands at its offset");
        (await http.IsClosedByServerAsync(TimeSpan.FromMilliseconds(200))).Should().BeFalse("the connection stays usable");
    }

    [Fact]
    public async Task A_client_sending_with_sendfile_fills_pipes_in_small_pieces_and_still_lands_byte_exact()
    {
        // sendfile(2) puts page-cache pages into the socket: a pipe's slots then fill before its bytes do,
        // so chunks end early and must still end on block boundaries.
        var id = await fixture.AddTicketAsync();
        var source = fixture.CreateSourceFile(32 * MiB, seed: 44);
        using var spliced = new SplicedBytes(fixture);
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(fixture.RemoteUri.Host, fixture.RemoteUri.Port);
        var head = Encoding.ASCII.GetBytes($"PUT /images/{id} HTTP/1.1\r\nHost: test\r\nContent-Length: {32 * MiB}\r\n\r\n");

        socket.SendFile(source, head, null, TransmitFileOptions.UseDefaultWorkerThread);
        var status = await ReadStatusAsync(socket);

        status.Should().StartWith("HTTP/1.1 200");
        spliced.Total.Should().BePositive();
        var export = await fixture.ReadExportAsync();
        var sent = await File.ReadAllBytesAsync(source);
        export[..sent.Length].Should().Equal(sent);
    }

    [Fact]
    public async Task A_body_that_ends_early_gets_400_and_the_ticket_takes_the_next_upload()
    {
        var id = await fixture.AddTicketAsync();
        await using (var http = await RawHttp.ConnectAsync(fixture.RemoteUri))
        {
            await http.SendAsync(Encoding.ASCII.GetBytes($"PUT /images/{id} HTTP/1.1\r\nHost: test\r\nContent-Length: {32 * MiB}\r\n\r\n"));
            await http.SendAsync(Random(10 * MiB, seed: 45));
            http.ShutdownSend();

            var response = await http.ReadResponseAsync();

            response.Status.Should().Be(400, response.Text);
            response.Text.Should().Contain("Requested 33554432 bytes");
            response.Header("connection").Should().Be("close");
        }
        var source = fixture.CreateSourceFile(fixture.ImageSize, seed: 46);
        var put = await fixture.CurlAsync("-X", "PUT", "--upload-file", source, fixture.ImageUrl(id));
        put.Status.Should().Be(200, "nothing of the failed upload holds the ticket: {0}", put.Text);
        (await fixture.CompareAsync(source)).ExitCode.Should().Be(0);
    }

    [Fact]
    public async Task A_client_that_stops_sending_mid_body_gets_408_and_a_closed_connection()
    {
        var id = await fixture.AddTicketAsync();
        await using var http = await RawHttp.ConnectAsync(fixture.RemoteUri);
        using var spliced = new SplicedBytes(fixture);
        await http.SendAsync(Encoding.ASCII.GetBytes($"PUT /images/{id} HTTP/1.1\r\nHost: test\r\nContent-Length: {32 * MiB}\r\n\r\n"));
        await http.SendAsync(Random(6 * MiB, seed: 47));

        // The fixture asks for 1 MiB/s after a 2 s grace period (Limits:MinRequestBodyDataRate).
        var response = await http.ReadResponseAsync().WaitAsync(TimeSpan.FromSeconds(60));

        response.Status.Should().Be(408, response.Text);
        spliced.Total.Should().BePositive("the stall happened while splicing");
        (await http.IsClosedByServerAsync(TimeSpan.FromSeconds(10))).Should().BeTrue();
    }

    private static async Task<string> ReadStatusAsync(Socket socket)
    {
        var received = new List<byte>();
        var buffer = new byte[4096];
        while (!Encoding.ASCII.GetString([.. received]).Contains("\r\n\r\n", StringComparison.Ordinal))
        {
            var n = await socket.ReceiveAsync(buffer).WaitAsync(TimeSpan.FromSeconds(60));
            if (n == 0)
            {
                break;
            }
            received.AddRange(buffer.AsSpan(0, n).ToArray());
        }
        return Encoding.ASCII.GetString([.. received]);
    }

    internal static byte[] Random(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }
}

/// <summary>The same with Http:SpliceUploads=false: every PUT is copied, none spliced.</summary>
public sealed class CopiedUploadTests(NoSpliceFixture fixture) : IClassFixture<NoSpliceFixture>
{
    [Fact]
    public async Task With_splicing_off_a_large_put_is_copied_and_lands_byte_exact()
    {
        var spliced = await SplicedUploadTests.PutWholeImageAsync(fixture, seed: 48, id => [fixture.ImageUrl(id)]);

        spliced.Should().Be(0);
    }
}

/// <summary>The defaults: the plain-HTTP listener splices, the unix socket copies (Http:SpliceLocalUploads).</summary>
public sealed class DefaultUploadPathTests(DefaultUploadFixture fixture) : IClassFixture<DefaultUploadFixture>
{
    [Fact]
    public async Task By_default_a_put_over_plain_http_is_spliced_and_one_over_the_unix_socket_is_copied()
    {
        var overTcp = await SplicedUploadTests.PutWholeImageAsync(fixture, seed: 49, id => [fixture.ImageUrl(id)]);
        var overUnix = await SplicedUploadTests.PutWholeImageAsync(fixture, seed: 50, id => ["--unix-socket", fixture.LocalSocket, $"http://localhost/images/{id}"]);

        overTcp.Should().BeInRange(fixture.ImageSize / 2, fixture.ImageSize);
        overUnix.Should().Be(0);
    }
}

public sealed class SpliceFixture() : ProxyFixture("raw", DefaultImageSize, new Dictionary<string, string?>
{
    ["Limits:MinRequestBodyDataRate"] = (1024 * 1024).ToString(System.Globalization.CultureInfo.InvariantCulture),
    ["Limits:MinRequestBodyDataRateGracePeriod"] = "2",
    ["Http:SpliceLocalUploads"] = "true",
});

public sealed class DefaultUploadFixture() : ProxyFixture("raw", DefaultImageSize, new Dictionary<string, string?>());

public sealed class NoSpliceFixture() : ProxyFixture("raw", DefaultImageSize, new Dictionary<string, string?>
{
    ["Http:SpliceUploads"] = "false",
});

/// <summary>Sums imageio.proxy.upload.spliced of one proxy (its IMeterFactory), whatever else runs in the process.</summary>
internal sealed class SplicedBytes : IDisposable
{
    private readonly MeterListener _listener = new();
    private long _total;

    public SplicedBytes(ProxyFixture fixture)
    {
        var factory = fixture.Server.Services.GetRequiredService<IMeterFactory>();
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == ProxyMetrics.MeterName && ReferenceEquals(instrument.Meter.Scope, factory)
                && instrument.Name == "imageio.proxy.upload.spliced")
            {
                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<long>((_, value, _, _) => Interlocked.Add(ref _total, value));
        _listener.Start();
    }

    public long Total => Interlocked.Read(ref _total);

    public void Dispose() => _listener.Dispose();
}
