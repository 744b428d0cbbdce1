using System.Text.Json;
using ImageioProxy.Tests.Support;
using TestSupport;

namespace ImageioProxy.Tests.Http;

/// <summary>context=dirty on a "dirty": true ticket: the export's qemu:dirty-bitmap (found with
/// LIST_META_CONTEXT) merged with base:allocation, as imageio does for incremental backup (imageio-api.md §3.5).</summary>
public class DirtyExtentsTests(ProxyFixture fixture) : IClassFixture<ProxyFixture>
{
    [Fact]
    public async Task DirtyContext_ReportsWhatWasWrittenSinceTheBitmapWasAdded()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("backup.qcow2");
        const long size = 16 << 20;
        await QemuImg.CreateAsync(image, "qcow2", size);
        await ExternalProcess.RunAsync("qemu-img", ["bitmap", "--add", image, "bm0"]);
        // 1 MiB written at 4 MiB after the bitmap exists: only that range is dirty.
        (await ExternalProcess.RunAsync("qemu-io", ["-f", "qcow2", "-c", "write -P 0xab 4M 1M", image])).EnsureSuccess();
        await using var server = await QemuNbdServer.StartAsync(image, new QemuNbdOptions { Format = "qcow2", ReadOnly = true, Bitmaps = ["bm0"] });

        var ticket = await fixture.AddTicketAsync(["read"], t =>
        {
            t["url"] = server.ImageioUrl;
            t["size"] = size;
            t["dirty"] = true;
        });
        using var response = await fixture.Data.GetAsync($"/images/{ticket}/extents?context=dirty");
        var body = await response.Content.ReadAsStringAsync();
        ((int)response.StatusCode).Should().Be(200, body);
        var extents = JsonDocument.Parse(body).RootElement.EnumerateArray()
            .Select(e => (Start: e.GetProperty("start").GetInt64(), Length: e.GetProperty("length").GetInt64(), Dirty: e.GetProperty("dirty").GetBoolean(), Zero: e.GetProperty("zero").GetBoolean()))
            .ToList();
        extents.Sum(e => e.Length).Should().Be(size);
        extents.Should().Contain((4L << 20, 1L << 20, true, false));
        extents.Where(e => e.Dirty).Sum(e => e.Length).Should().Be(1 << 20);
        await fixture.RemoveTicketAsync(ticket);

        // A ticket without "dirty" keeps answering 404, as imageio does.
        var plain = await fixture.AddTicketAsync(["read"], t =>
        {
            t["url"] = server.ImageioUrl;
            t["size"] = size;
        });
        using var refused = await fixture.Data.GetAsync($"/images/{plain}/extents?context=dirty");
        ((int)refused.StatusCode).Should().Be(404);
        await fixture.RemoveTicketAsync(plain);
    }
}
