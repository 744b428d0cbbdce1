using System.Text.Json;
using ImageioProxy.Checksums;
using ImageioProxy.Tests.Checksums;
using ImageioProxy.Tests.Support;
using NbdClient;

namespace ImageioProxy.Tests.Http;

/// <summary>/extents and /checksum on a raw image (imageio-api.md §3.5, §3.6).</summary>
public class ExtentsAndChecksumTests(ProxyFixture fixture) : IClassFixture<ProxyFixture>
{
    private const long MiB = 1024 * 1024;

    private static List<(long Start, long Length, bool Zero, bool Hole)> Parse(byte[] body)
    {
        using var json = JsonDocument.Parse(body);
        return json.RootElement.EnumerateArray().Select(e => (e.GetProperty("start").GetInt64(), e.GetProperty("length").GetInt64(),
            e.GetProperty("zero").GetBoolean(), e.GetProperty("hole").GetBoolean())).ToList();
    }

    [Fact]
    public async Task Extents_cover_the_image_and_show_data_and_zero_ranges()
    {
        var id = await fixture.AddTicketAsync(changes: t => t["sparse"] = true);
        (await fixture.CurlAsync("-X", "PATCH", "--data", $"{{\"op\": \"zero\", \"size\": {fixture.ImageSize}}}", fixture.ImageUrl(id))).Status.Should().Be(200);
        var data = fixture.CreateSourceFile(MiB, seed: 11);
        (await fixture.CurlAsync("-X", "PUT", "--upload-file", data, "-H", $"Content-Range: bytes {4 * MiB}-*/*", fixture.ImageUrl(id))).Status.Should().Be(200);

        var response = await fixture.CurlAsync(fixture.ImageUrl(id, "/extents"));
        var extents = Parse(response.Body);

        response.Status.Should().Be(200);
        response.Header("content-type").Should().Be("application/json");
        extents[0].Start.Should().Be(0);
        extents.Sum(e => e.Length).Should().Be(fixture.ImageSize);
        extents.Zip(extents.Skip(1)).Should().OnlyContain(p => p.First.Start + p.First.Length == p.Second.Start && p.First.Zero != p.Second.Zero);
        extents.Should().Contain(e => !e.Zero && e.Start <= 4 * MiB && e.Start + e.Length >= 5 * MiB);
        extents.Should().Contain(e => e.Zero && e.Start == 0);
    }

    [Fact]
    public async Task Extents_with_start_and_length_cover_only_that_range()
    {
        var id = await fixture.AddTicketAsync(["read"]);

        var response = await fixture.CurlAsync(fixture.ImageUrl(id, $"/extents?start={MiB}&length={2 * MiB}"));
        var beyond = await fixture.CurlAsync(fixture.ImageUrl(id, $"/extents?start={fixture.ImageSize}&length=1"));
        var bad = await fixture.CurlAsync(fixture.ImageUrl(id, "/extents?start=-1"));
        var badContext = await fixture.CurlAsync(fixture.ImageUrl(id, "/extents?context=x"));

        response.Status.Should().Be(200);
        var extents = Parse(response.Body);
        extents[0].Start.Should().Be(MiB);
        extents.Sum(e => e.Length).Should().Be(2 * MiB);
        beyond.Status.Should().Be(416);
        bad.Status.Should().Be(400);
        badContext.Status.Should().Be(400);
        badContext.Text.Should().Be("Unsupported value 'x' for 'context', expecting one of ['dirty', 'zero']\n");
    }

    [Fact]
    public async Task Checksum_equals_the_block_hash_of_the_uploaded_source()
    {
        var id = await fixture.AddTicketAsync();
        var source = fixture.CreateSourceFile(fixture.ImageSize, seed: 12);
        (await fixture.CurlAsync("-X", "PUT", "--upload-file", source, fixture.ImageUrl(id))).Status.Should().Be(200);
        var bytes = await File.ReadAllBytesAsync(source);
        var expected = await BlockHash.ComputeAsync(new InMemoryChecksumSource(bytes, [new NbdExtent(0, bytes.Length, 0)]),
            bytes.Length, "sha256", 1024 * 1024, CancellationToken.None);

        var response = await fixture.CurlAsync(fixture.ImageUrl(id, "/checksum?algorithm=sha256&block_size=1048576"));

        response.Status.Should().Be(200, response.Text);
        using var json = JsonDocument.Parse(response.Body);
        json.RootElement.GetProperty("algorithm").GetString().Should().Be("sha256");
        json.RootElement.GetProperty("block_size").GetInt32().Should().Be(1048576);
        json.RootElement.GetProperty("checksum").GetString().Should().Be(expected);
    }

    [Theory]
    [InlineData("?block_size=x", "Invalid block size: 'x'\n")]
    [InlineData("?block_size=4096", "Block size out of allowed range: 1048576-16777216\n")]
    [InlineData("?block_size=1048577", "Block size is not aligned to 4096\n")]
    [InlineData("?algorithm=nope", "Unsupported value 'nope' for 'algorithm'")]
    public async Task Checksum_with_bad_parameters_is_400(string query, string expected)
    {
        var id = await fixture.AddTicketAsync();

        var response = await fixture.CurlAsync(fixture.ImageUrl(id, "/checksum" + query));

        response.Status.Should().Be(400);
        response.Text.Should().StartWith(expected);
    }

    [Fact]
    public async Task Checksum_algorithms_need_no_ticket()
    {
        var response = await fixture.CurlAsync(fixture.ImageUrl("anything", "/checksum/algorithms"));

        response.Status.Should().Be(200);
        using var json = JsonDocument.Parse(response.Body);
        var names = json.RootElement.GetProperty("algorithms").EnumerateArray().Select(e => e.GetString()).ToList();
        names.Should().Contain("blake2b").And.Contain("sha256").And.BeInAscendingOrder(StringComparer.Ordinal);
    }
}

/// <summary>A qcow2 backend: uploads, compares, and "hole" extents from qemu:allocation-depth.</summary>
public class Qcow2Tests(Qcow2ProxyFixture fixture) : IClassFixture<Qcow2ProxyFixture>
{
    [Fact]
    public async Task Fresh_qcow2_reports_holes_then_an_upload_matches_the_source()
    {
        var id = await fixture.AddTicketAsync();
        var before = await fixture.CurlAsync(fixture.ImageUrl(id, "/extents"));
        using (var json = JsonDocument.Parse(before.Body))
        {
            json.RootElement.EnumerateArray().Should().OnlyContain(e => e.GetProperty("hole").GetBoolean() && e.GetProperty("zero").GetBoolean());
        }
        var source = fixture.CreateSourceFile(fixture.ImageSize, seed: 21);

        var put = await fixture.CurlAsync("-X", "PUT", "--upload-file", source, fixture.ImageUrl(id, "?flush=y"));
        var after = await fixture.CurlAsync(fixture.ImageUrl(id, "/extents"));

        put.Status.Should().Be(200, put.Text);
        (await fixture.CompareAsync(source)).ExitCode.Should().Be(0);
        using var afterJson = JsonDocument.Parse(after.Body);
        afterJson.RootElement.EnumerateArray().Should().Contain(e => !e.GetProperty("hole").GetBoolean() && !e.GetProperty("zero").GetBoolean());
    }
}
