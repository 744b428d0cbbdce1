using System.Text.Json;
using ImageioProxy.Tests.Support;

namespace ImageioProxy.Tests.Http;

/// <summary>/images/{id} end to end: real curl, the proxy, real qemu-nbd on a raw image.</summary>
public class ImagesTests(ProxyFixture fixture) : IClassFixture<ProxyFixture>
{
    private const long MiB = 1024 * 1024;

    [Fact]
    public async Task Options_on_a_write_ticket_reports_every_feature_and_the_limits()
    {
        var id = await fixture.AddTicketAsync(["write"]);

        var response = await fixture.CurlAsync("-X", "OPTIONS", fixture.ImageUrl(id));

        response.Status.Should().Be(200);
        response.Header("allow").Should().Be("OPTIONS,GET,PUT,PATCH");
        response.Header("content-type").Should().Be("application/json");
        using var json = JsonDocument.Parse(response.Body);
        json.RootElement.GetProperty("features").EnumerateArray().Select(e => e.GetString())
            .Should().Equal("checksum", "extents", "flush", "zero");
        json.RootElement.GetProperty("max_readers").GetInt32().Should().Be(8);
        json.RootElement.GetProperty("max_writers").GetInt32().Should().Be(8);
        json.RootElement.GetProperty("unix_socket").GetString().Should().Be(fixture.LocalSocket);
        response.Text.Should().EndWith("\n");
    }

    [Fact]
    public async Task Options_on_a_read_ticket_allows_only_reading()
    {
        var id = await fixture.AddTicketAsync(["read"]);

        var response = await fixture.CurlAsync("-X", "OPTIONS", fixture.ImageUrl(id));

        response.Status.Should().Be(200);
        response.Header("allow").Should().Be("OPTIONS,GET");
        using var json = JsonDocument.Parse(response.Body);
        json.RootElement.GetProperty("features").EnumerateArray().Select(e => e.GetString()).Should().Equal("checksum", "extents");
    }

    [Fact]
    public async Task Options_star_needs_no_ticket_and_omits_the_limits()
    {
        var response = await fixture.CurlAsync("-X", "OPTIONS", fixture.ImageUrl("*"));

        response.Status.Should().Be(200);
        response.Header("allow").Should().Be("OPTIONS,GET,PUT,PATCH");
        using var json = JsonDocument.Parse(response.Body);
        json.RootElement.TryGetProperty("max_writers", out _).Should().BeFalse();
        json.RootElement.GetProperty("features").GetArrayLength().Should().Be(4);
    }

    [Fact]
    public async Task Whole_image_put_then_get_returns_the_same_bytes()
    {
        var id = await fixture.AddTicketAsync();
        var source = fixture.CreateSourceFile(fixture.ImageSize, seed: 1);

        var put = await fixture.CurlAsync("-X", "PUT", "--upload-file", source, fixture.ImageUrl(id));
        put.Status.Should().Be(200, put.Text);
        put.Body.Should().BeEmpty();
        (await fixture.CompareAsync(source)).ExitCode.Should().Be(0);

        var get = await fixture.CurlAsync(fixture.ImageUrl(id));
        get.Status.Should().Be(200);
        get.Header("content-type").Should().Be("application/octet-stream");
        get.Header("content-disposition").Should().Be("attachment");
        get.Header("content-range").Should().BeNull();
        get.Body.Should().Equal(await File.ReadAllBytesAsync(source));
    }

    [Fact]
    public async Task Four_parallel_range_puts_without_flush_then_patch_flush_match_the_source()
    {
        var id = await fixture.AddTicketAsync();
        var source = fixture.CreateSourceFile(fixture.ImageSize, seed: 2);
        var bytes = await File.ReadAllBytesAsync(source);
        var quarter = fixture.ImageSize / 4;

        var puts = Enumerable.Range(0, 4).Select(async i =>
        {
            var part = Path.Combine(fixture.Directory, $"part-{id}-{i}");
            await File.WriteAllBytesAsync(part, bytes.AsSpan((int)(i * quarter), (int)quarter).ToArray());
            var first = i * quarter;
            return await fixture.CurlAsync("-X", "PUT", "--upload-file", part,
                "-H", $"Content-Range: bytes {first}-{first + quarter - 1}/*", fixture.ImageUrl(id, "?flush=n"));
        }).ToList();
        foreach (var put in await Task.WhenAll(puts))
        {
            put.Status.Should().Be(200, put.Text);
        }
        var flush = await fixture.CurlAsync("-X", "PATCH", "-H", "Content-Type: application/json", "--data", "{\"op\": \"flush\"}", fixture.ImageUrl(id));

        flush.Status.Should().Be(200, flush.Text);
        (await fixture.CompareAsync(source)).ExitCode.Should().Be(0);
    }

    [Fact]
    public async Task Chunked_put_without_content_length_is_written()
    {
        var id = await fixture.AddTicketAsync();
        var source = fixture.CreateSourceFile(3 * MiB + 123, seed: 3);

        var put = await fixture.CurlAsync("-X", "PUT", "-H", "Transfer-Encoding: chunked", "-H", "Content-Range: bytes 4096-*/*",
            "--data-binary", $"@{source}", fixture.ImageUrl(id));

        put.Status.Should().Be(200, put.Text);
        var export = await fixture.ReadExportAsync();
        export.AsSpan(4096, (int)(3 * MiB + 123)).ToArray().Should().Equal(await File.ReadAllBytesAsync(source));
    }

    [Fact]
    public async Task Range_get_answers_206_with_content_range_of_the_ticket_size()
    {
        var id = await fixture.AddTicketAsync(changes: t => t["filename"] = "disk.raw");
        var source = fixture.CreateSourceFile(fixture.ImageSize, seed: 4);
        (await fixture.CurlAsync("-X", "PUT", "--upload-file", source, fixture.ImageUrl(id))).Status.Should().Be(200);
        var bytes = await File.ReadAllBytesAsync(source);

        var get = await fixture.CurlAsync("-H", "Range: bytes=1000-2000999", fixture.ImageUrl(id));

        get.Status.Should().Be(206);
        get.Header("content-range").Should().Be($"bytes 1000-2000999/{fixture.ImageSize}");
        get.Header("content-length").Should().Be("2000000");
        get.Header("content-disposition").Should().Be("attachment; filename=disk.raw");
        get.Body.Should().Equal(bytes.AsSpan(1000, 2000000).ToArray());
    }

    [Fact]
    public async Task Suffix_and_open_ended_ranges_return_the_tail()
    {
        var id = await fixture.AddTicketAsync();
        var source = fixture.CreateSourceFile(fixture.ImageSize, seed: 5);
        (await fixture.CurlAsync("-X", "PUT", "--upload-file", source, fixture.ImageUrl(id))).Status.Should().Be(200);
        var bytes = await File.ReadAllBytesAsync(source);

        var suffix = await fixture.CurlAsync("-H", "Range: bytes=-100", fixture.ImageUrl(id));
        var open = await fixture.CurlAsync("-H", $"Range: bytes={fixture.ImageSize - 50}-", fixture.ImageUrl(id));

        suffix.Status.Should().Be(206);
        suffix.Header("content-range").Should().Be($"bytes {fixture.ImageSize - 100}-{fixture.ImageSize - 1}/{fixture.ImageSize}");
        suffix.Body.Should().Equal(bytes[^100..]);
        open.Status.Should().Be(206);
        open.Body.Should().Equal(bytes[^50..]);
    }

    [Fact]
    public async Task Head_sends_the_get_headers_without_a_body()
    {
        var id = await fixture.AddTicketAsync();

        var head = await fixture.CurlAsync("-I", "-H", "Range: bytes=0-9", fixture.ImageUrl(id));

        head.Status.Should().Be(206);
        head.Header("content-length").Should().Be("10");
        head.Header("content-range").Should().Be($"bytes 0-9/{fixture.ImageSize}");
    }

    [Fact]
    public async Task Patch_zero_zeroes_the_range_and_leaves_the_rest()
    {
        var id = await fixture.AddTicketAsync();
        var source = fixture.CreateSourceFile(fixture.ImageSize, seed: 6);
        (await fixture.CurlAsync("-X", "PUT", "--upload-file", source, fixture.ImageUrl(id))).Status.Should().Be(200);

        var zero = await fixture.CurlAsync("-X", "PATCH", "-H", "Content-Type: application/json",
            "--data", $"{{\"op\": \"zero\", \"offset\": {MiB + 7}, \"size\": {10 * MiB}, \"flush\": true}}", fixture.ImageUrl(id));

        zero.Status.Should().Be(200, zero.Text);
        var expected = await File.ReadAllBytesAsync(source);
        Array.Clear(expected, (int)(MiB + 7), (int)(10 * MiB));
        var expectedFile = Path.Combine(fixture.Directory, $"expected-{id}");
        await File.WriteAllBytesAsync(expectedFile, expected);
        (await fixture.CompareAsync(expectedFile)).ExitCode.Should().Be(0);
    }

    [Fact]
    public async Task Patch_zero_of_the_whole_image_on_a_sparse_ticket_makes_it_read_as_zero()
    {
        var id = await fixture.AddTicketAsync(changes: t => t["sparse"] = true);
        (await fixture.CurlAsync("-X", "PUT", "--upload-file", fixture.CreateSourceFile(fixture.ImageSize, seed: 7), fixture.ImageUrl(id)))
            .Status.Should().Be(200);

        var zero = await fixture.CurlAsync("-X", "PATCH", "--data", $"{{\"op\": \"zero\", \"size\": {fixture.ImageSize}}}", fixture.ImageUrl(id));
        var extents = await fixture.CurlAsync(fixture.ImageUrl(id, "/extents"));

        zero.Status.Should().Be(200, zero.Text);
        (await fixture.ReadExportAsync()).Should().OnlyContain(b => b == 0);
        using var json = JsonDocument.Parse(extents.Body);
        json.RootElement.EnumerateArray().Should().OnlyContain(e => e.GetProperty("zero").GetBoolean());
    }

    [Fact]
    public async Task Put_with_flush_no_then_patch_flush_and_ticket_status_counts_transferred_bytes()
    {
        var id = await fixture.AddTicketAsync(["write"]);
        var source = fixture.CreateSourceFile(8 * MiB, seed: 8);

        var put = await fixture.CurlAsync("-X", "PUT", "--upload-file", source, "-H", "Content-Range: bytes 0-8388607/*", fixture.ImageUrl(id, "?flush=n"));
        var status = await fixture.Control.GetStringAsync($"/tickets/{id}");

        put.Status.Should().Be(200);
        using var json = JsonDocument.Parse(status);
        json.RootElement.GetProperty("transferred").GetInt64().Should().Be(8 * MiB);
        json.RootElement.GetProperty("active").GetBoolean().Should().BeFalse();
    }

    [Fact]
    public async Task Close_y_closes_the_connection_after_the_response()
    {
        var id = await fixture.AddTicketAsync();

        var get = await fixture.CurlAsync("-H", "Range: bytes=0-0", fixture.ImageUrl(id, "?close=y"));

        get.Status.Should().Be(206);
        get.Header("connection").Should().Be("close");
    }

    [Fact]
    public async Task Cors_headers_are_added_only_when_asked()
    {
        var id = await fixture.AddTicketAsync();

        var preflight = await fixture.CurlAsync("-X", "OPTIONS", "-H", "Origin: https://engine", "-H", "Access-Control-Request-Method: PUT",
            "-H", "Access-Control-Request-Headers: content-range", fixture.ImageUrl(id));
        var plain = await fixture.CurlAsync("-X", "OPTIONS", fixture.ImageUrl(id));

        preflight.Header("access-control-allow-origin").Should().Be("*");
        preflight.Header("access-control-allow-methods").Should().Be("OPTIONS,GET,PUT");
        preflight.Header("access-control-allow-headers").Should().Be("*");
        preflight.Header("access-control-max-age").Should().Be("86400");
        plain.Header("access-control-allow-origin").Should().BeNull();
    }

    [Fact]
    public async Task Local_unix_socket_serves_the_same_api()
    {
        var id = await fixture.AddTicketAsync();

        var options = await fixture.CurlAsync("--unix-socket", fixture.LocalSocket, "-X", "OPTIONS", $"http://localhost/images/{id}");

        options.Status.Should().Be(200);
        options.Header("allow").Should().Be("OPTIONS,GET,PUT,PATCH");
    }

    [Fact]
    public async Task Idle_keep_alive_connection_survives_kestrel_heartbeats()
    {
        // Regression: KeepAliveTimeout=InfiniteTimeSpan overflowed in Kestrel and closed idle
        // connections at the next 1 s heartbeat; virt-v2v keeps its 4 connections idle between requests.
        var id = await fixture.AddTicketAsync();
        await using var http = await RawHttp.ConnectAsync(fixture.RemoteUri);
        await http.SendAsync($"OPTIONS /images/{id} HTTP/1.1\nHost: test\n\n");
        (await http.ReadResponseAsync()).Status.Should().Be(200);

        (await http.IsClosedByServerAsync(TimeSpan.FromSeconds(2.5))).Should().BeFalse();
        await http.SendAsync($"OPTIONS /images/{id} HTTP/1.1\nHost: test\n\n");

        (await http.ReadResponseAsync()).Status.Should().Be(200);
    }

    [Fact]
    public async Task Info_reports_the_imageio_version_with_and_without_the_slash()
    {
        var slash = await fixture.CurlAsync($"{fixture.RemoteUri}info/");
        var noSlash = await fixture.CurlAsync($"{fixture.RemoteUri}info");

        slash.Status.Should().Be(200);
        slash.Text.Should().Be("{\"version\":\"2.5.3\"}\n");
        noSlash.Status.Should().Be(200);
    }
}
