using ImageioProxy.Tests.Support;
using TestSupport;

namespace ImageioProxy.Tests.Reliability;

/// <summary>A 200 on flush means the bytes are on stable storage as far as qemu-nbd can tell: they survive
/// kill -9 of qemu-nbd and of the proxy. qcow2 images make the tests able to fail: without a flush, qemu
/// keeps the new L2 table entries in memory, so kill -9 loses every cluster written (checked by the
/// control case below).</summary>
[Collection(ReliabilityCollection.Name)]
public sealed class CrashConsistencyTests(FaultProxyFixture fixture) : IClassFixture<FaultProxyFixture>
{
    private const int MiB = 1024 * 1024;

    private readonly ReliabilityHttp _http = new(fixture.Data, fixture.RemoteUri);

    [Fact]
    public async Task Upload_answered_200_on_flush_survives_kill_9_of_qemu_nbd_and_an_unflushed_one_does_not()
    {
        using var directory = TempDirectory.Create("crash");
        var data = ReliabilityHttp.RandomBytes(8 * MiB, 11);
        var flushedImage = directory.Combine("flushed.qcow2");
        var unflushedImage = directory.Combine("unflushed.qcow2");
        var flushed = await UploadThenKillQemuNbdAsync(flushedImage, data, flush: true);
        var unflushed = await UploadThenKillQemuNbdAsync(unflushedImage, data, flush: false);

        flushed.Status.Should().Be(200, flushed.ToString());
        unflushed.Status.Should().Be(200, unflushed.ToString());
        (await ReadRangeAsync(flushedImage, 4 * MiB, data.Length)).Should().Equal(data, "a 200 on flush means the data is durable");
        (await ReadRangeAsync(unflushedImage, 4 * MiB, data.Length)).Should().NotEqual(data,
            "the control case: without a flush qemu-nbd loses the data on kill -9, so the check above can fail");
    }

    [Fact]
    public async Task Upload_answered_200_on_flush_survives_kill_9_of_the_proxy_process_and_then_of_qemu_nbd()
    {
        using var directory = TempDirectory.Create("crash");
        var image = directory.Combine("disk.qcow2");
        await QemuImg.CreateAsync(image, "qcow2", ProxyFixture.DefaultImageSize);
        await using var qemuNbd = await QemuNbdServer.StartAsync(image, new QemuNbdOptions { Format = "qcow2", Cache = "writeback" });
        await using var proxy = await ChildProxy.StartAsync(directory.Path);
        var ticket = ReliabilityTickets.For(qemuNbd.ImageioUrl);
        await proxy.AddTicketAsync(ticket);
        using var client = new HttpClient();
        var http = new ReliabilityHttp(client, proxy.RemoteUri);
        var data = ReliabilityHttp.RandomBytes(8 * MiB, 12);

        var first = await http.PutAsync((string)ticket["uuid"]!, 0, data[..(4 * MiB)], flush: false);
        var second = await http.PutAsync((string)ticket["uuid"]!, 4 * MiB, data[(4 * MiB)..], flush: false);
        var flush = await http.FlushAsync((string)ticket["uuid"]!);
        proxy.Process.Kill();
        await proxy.Process.WaitForExitAsync(ReliabilityHttp.Bound);
        qemuNbd.Kill();
        await qemuNbd.Process.WaitForExitAsync(ReliabilityHttp.Bound);

        first.Status.Should().Be(200);
        second.Status.Should().Be(200);
        flush.Status.Should().Be(200, flush.ToString());
        proxy.Process.ExitCode.Should().Be(137, "the proxy was killed, not stopped");
        (await ReadRangeAsync(image, 0, data.Length)).Should().Equal(data);
    }

    private async Task<Reply> UploadThenKillQemuNbdAsync(string image, byte[] data, bool flush)
    {
        await QemuImg.CreateAsync(image, "qcow2", ProxyFixture.DefaultImageSize);
        await using var qemuNbd = await QemuNbdServer.StartAsync(image, new QemuNbdOptions { Format = "qcow2", Cache = "writeback" });
        var id = await fixture.AddTicketAsync(changes: t => t["url"] = qemuNbd.ImageioUrl);
        var reply = await _http.PutAsync(id, 4 * MiB, data, flush);
        qemuNbd.Kill();
        await qemuNbd.Process.WaitForExitAsync(ReliabilityHttp.Bound);
        await fixture.RemoveTicketAsync(id);
        return reply;
    }

    /// <summary>Reads bytes of a (qcow2) image file as the guest sees them, through qemu-img convert.</summary>
    internal static async Task<byte[]> ReadRangeAsync(string image, long offset, int length)
    {
        var raw = image + ".raw";
        await QemuImg.ConvertAsync(image, "qcow2", raw, "raw");
        try
        {
            await using var file = File.OpenRead(raw);
            file.Position = offset;
            var bytes = new byte[length];
            await file.ReadExactlyAsync(bytes);
            return bytes;
        }
        finally
        {
            File.Delete(raw);
        }
    }
}

/// <summary>Tickets for a child-process proxy.</summary>
internal static class ReliabilityTickets
{
    public static Dictionary<string, object?> For(string url, string[]? ops = null, long size = ProxyFixture.DefaultImageSize) => new()
    {
        ["uuid"] = Guid.NewGuid().ToString(),
        ["size"] = size,
        ["ops"] = ops ?? ["read", "write"],
        ["timeout"] = 300,
        ["url"] = url,
        ["transfer_id"] = $"rel-{Guid.NewGuid():N}",
    };
}
