using ImageioProxy.Tests.Support;
using TestSupport;

namespace ImageioProxy.Tests.EndToEnd;

/// <summary>A 1 GiB qemu-nbd-backed image for virt-v2v-sized uploads.</summary>
public sealed class OneGibProxyFixture : ProxyFixture
{
    public OneGibProxyFixture() : base("raw", 1L << 30) { }
}

/// <summary>virt-v2v's upload plugin traffic, reproduced exactly (virt-v2v-client.md): OPTIONS on its own
/// connection, a pool of min(max_writers, 4) keep-alive connections, ≤ 4 MiB PUT ?flush=n with
/// Content-Range A-B/*, PATCH zero up to ~80 MiB, a PATCH flush on every pool connection.</summary>
public class VirtV2vUploadTests(OneGibProxyFixture fixture) : IClassFixture<OneGibProxyFixture>
{
    [Fact]
    public async Task OneGibImageWithDataZerosAndHoles_ArrivesIntact()
    {
        using var dir = TempDirectory.Create();
        var source = await QemuImg.WriteRandomImageAsync(dir.Combine("source.raw"), fixture.ImageSize, seed: 2026, zeroFraction: 0.55);
        source.Regions.Should().Contain(r => r.Kind == ImageRegionKind.Hole).And.Contain(r => r.Kind == ImageRegionKind.Zero);
        var ticket = await fixture.AddTicketAsync(["write"]);

        await using (var client = await V2vLikeClient.OpenAsync(new Uri(fixture.ImageUrl(ticket))))
        {
            client.PoolSize.Should().Be(4, "the server advertises max_writers >= 4, so virt-v2v opens 4 connections");
            client.ServerOptions.CanFlush.Should().BeTrue();
            client.ServerOptions.CanZero.Should().BeTrue();
            await client.UploadImageAsync(source.Path).WaitAsync(TimeSpan.FromMinutes(5));
        }

        var compare = await fixture.CompareAsync(source.Path);
        compare.ExitCode.Should().Be(0, compare.ToString());
        await fixture.RemoveTicketAsync(ticket);
    }

    [Fact]
    public async Task UploadOverTheLocalUnixSocket_AsOnAnOvirtHost()
    {
        using var dir = TempDirectory.Create();
        var source = await QemuImg.WriteRandomImageAsync(dir.Combine("source.raw"), fixture.ImageSize, seed: 7, zeroFraction: 0.8);
        var ticket = await fixture.AddTicketAsync(["write"]);

        await using (var client = await V2vLikeClient.OpenAsync(new Uri(fixture.ImageUrl(ticket)), new V2vLikeClientOptions { IsOvirtHost = true }))
        {
            client.ServerOptions.UnixSocket.Should().Be(fixture.LocalSocket);
            await client.UploadImageAsync(source.Path).WaitAsync(TimeSpan.FromMinutes(5));
        }

        var compare = await fixture.CompareAsync(source.Path);
        compare.ExitCode.Should().Be(0, compare.ToString());
        await fixture.RemoveTicketAsync(ticket);
    }
}
