using ImageioProxy.Client.Tests.Support;
using ImageioProxy.Tests.Support;
using TestSupport;

namespace ImageioProxy.Client.Tests;

/// <summary>Upload, download and checksum against our proxy in front of a real qemu-nbd, checked with
/// qemu-img compare.</summary>
public sealed class TransferTests(ProxyFixture proxy) : IClassFixture<ProxyFixture>, IDisposable
{
    private static readonly TimeSpan Bound = TimeSpan.FromMinutes(2);
    private readonly TempDirectory _directory = TempDirectory.Create("ipxc");
    private readonly List<string> _warnings = [];

    public void Dispose() => _directory.Dispose();

    private ImageioClientOptions Options(bool unixSocket = true) => new() { ChunkSize = 1024 * 1024, UseUnixSocket = unixSocket, Warning = _warnings.Add };

    [Theory]
    [InlineData("raw", true)]
    [InlineData("qcow2", true)]
    [InlineData("raw", false)]
    public async Task Upload_DataZeroesAndHoles_TargetEqualsSource(string format, bool unixSocket)
    {
        var (raw, image) = await ClientTestImages.CreateAsync(_directory.Path, ProxyFixture.DefaultImageSize, seed: 11, format);
        var ticket = await proxy.AddTicketAsync();
        // Stale content first, so that a skipped zero extent would show as a difference.
        await FillTargetAsync(ticket, 0x5a);
        var progress = new TransferProgress();

        await ImageTransfers.UploadAsync(image, new Uri(proxy.ImageUrl(ticket)), Options(unixSocket), progress).WaitAsync(Bound);

        var compare = await QemuImg.CompareAsync(raw, proxy.NbdUri);
        compare.Identical.Should().BeTrue(compare.Output);
        progress.Transferred.Should().Be(ProxyFixture.DefaultImageSize);
        progress.Phase.Should().Be("upload completed");
        ClientTestImages.QemuNbdProcessesServing(image).Should().BeEmpty();
    }

    [Fact]
    public async Task Upload_TargetIsZero_SkipsZeroExtents()
    {
        var (raw, image) = await ClientTestImages.CreateAsync(_directory.Path, ProxyFixture.DefaultImageSize, seed: 12);
        var ticket = await proxy.AddTicketAsync();
        await ZeroTargetAsync(ticket);

        await ImageTransfers.UploadAsync(image, new Uri(proxy.ImageUrl(ticket)), Options(), new TransferProgress(), targetIsZero: true).WaitAsync(Bound);

        (await QemuImg.CompareAsync(raw, proxy.NbdUri)).Identical.Should().BeTrue();
    }

    [Theory]
    [InlineData(DownloadFormat.Raw)]
    [InlineData(DownloadFormat.Qcow2)]
    public async Task Download_IsSparseAndEqualsTheImage(DownloadFormat format)
    {
        var (raw, _) = await ClientTestImages.CreateAsync(_directory.Path, ProxyFixture.DefaultImageSize, seed: 13);
        // sparse: PATCH zero punches holes, so zero regions are reported as zero extents (written zeroes in a
        // raw file are allocated, and qemu-nbd reports those as data).
        var ticket = await proxy.AddTicketAsync(changes: t => t["sparse"] = true);
        await ImageTransfers.UploadAsync(raw, new Uri(proxy.ImageUrl(ticket)), Options(), new TransferProgress()).WaitAsync(Bound);
        var destination = _directory.Combine(format == DownloadFormat.Raw ? "copy.raw" : "copy.qcow2");
        var progress = new TransferProgress();

        await ImageTransfers.DownloadAsync(new Uri(proxy.ImageUrl(ticket)), destination, format, Options(), progress).WaitAsync(Bound);

        var formatName = format == DownloadFormat.Raw ? "raw" : "qcow2";
        var compare = await QemuImg.CompareAsync(raw, destination, "raw", formatName);
        compare.Identical.Should().BeTrue(compare.Output);
        var info = await QemuImg.InfoAsync(destination);
        info.Format.Should().Be(formatName);
        info.VirtualSize.Should().Be(ProxyFixture.DefaultImageSize);
        // Zero extents were not transferred: no data is allocated in them in the copy. (Zero runs under
        // TransferPlanner.SmallZeroRun between data are sent as data, so only check bigger ones.)
        using var server = await ImageioHttpClient.ConnectAsync(new Uri(proxy.ImageUrl(ticket)), Options());
        var zeroExtents = (await server.GetExtentsAsync()).Where(e => e.Zero && e.Length >= TransferPlanner.SmallZeroRun).ToList();
        zeroExtents.Sum(e => e.Length).Should().BeGreaterThan(ProxyFixture.DefaultImageSize / 8, "the test image is half zeroes and holes");
        var allocated = (await QemuImg.MapAsync(destination, formatName)).Where(m => m.Data).ToList();
        allocated.Should().NotBeEmpty();
        allocated.Should().NotContain(m => zeroExtents.Any(z => m.Start < z.End && z.Start < m.Start + m.Length),
            "zero extents must stay holes in the copy");
        progress.Transferred.Should().Be(ProxyFixture.DefaultImageSize);
        Directory.GetFiles(_directory.Path, "*.part").Should().BeEmpty();
    }

    [Theory]
    [InlineData("raw")]
    [InlineData("qcow2")]
    public async Task Checksum_OfTheLocalImage_EqualsTheServers(string format)
    {
        var (_, image) = await ClientTestImages.CreateAsync(_directory.Path, ProxyFixture.DefaultImageSize, seed: 14, format);
        var ticket = await proxy.AddTicketAsync();
        await ImageTransfers.UploadAsync(image, new Uri(proxy.ImageUrl(ticket)), Options(), new TransferProgress()).WaitAsync(Bound);

        var local = await ImageTransfers.ChecksumLocalAsync(image, null, "blake2b", 4 * 1024 * 1024).WaitAsync(Bound);
        var remote = await ImageTransfers.ChecksumRemoteAsync(new Uri(proxy.ImageUrl(ticket)), Options(), "blake2b", 4 * 1024 * 1024).WaitAsync(Bound);

        local.Checksum.Should().MatchRegex("^[0-9a-f]{64}$");
        local.Should().Be(remote);
    }

    [Fact]
    public async Task Checksum_DiffersWhenOneByteDiffers()
    {
        var (raw, _) = await ClientTestImages.CreateAsync(_directory.Path, 8 * 1024 * 1024, seed: 15);
        var before = await ImageTransfers.ChecksumLocalAsync(raw, "raw", "sha256", 1024 * 1024).WaitAsync(Bound);
        await using (var file = File.OpenWrite(raw))
        {
            file.Position = 5 * 1024 * 1024 + 3;
            file.WriteByte(0x42);
        }

        var after = await ImageTransfers.ChecksumLocalAsync(raw, "raw", "sha256", 1024 * 1024).WaitAsync(Bound);

        after.Checksum.Should().NotBe(before.Checksum);
    }

    [Fact]
    public async Task Info_ReportsFeaturesExtentsAndTheUnixSocket()
    {
        var ticket = await proxy.AddTicketAsync();
        await ZeroTargetAsync(ticket);

        var report = await ImageTransfers.InfoAsync(new Uri(proxy.ImageUrl(ticket)), Options()).WaitAsync(Bound);

        report.Server.Features.Should().Contain(["extents", "zero", "flush", "checksum"]);
        report.Server.UnixSocket.Should().Be(proxy.LocalSocket);
        report.UsesUnixSocket.Should().BeTrue();
        report.Size.Should().Be(ProxyFixture.DefaultImageSize);
        (report.ZeroBytes + report.HoleBytes).Should().Be(ProxyFixture.DefaultImageSize);
    }

    [Fact]
    public async Task Info_WithoutUnixSocket_StaysOnTcp()
    {
        var ticket = await proxy.AddTicketAsync();

        var report = await ImageTransfers.InfoAsync(new Uri(proxy.ImageUrl(ticket)), Options(unixSocket: false)).WaitAsync(Bound);

        report.UsesUnixSocket.Should().BeFalse();
    }

    private async Task FillTargetAsync(string ticket, byte value)
    {
        var fill = new byte[ProxyFixture.DefaultImageSize];
        Array.Fill(fill, value);
        using var content = new ByteArrayContent(fill);
        using var response = await proxy.Data.PutAsync($"/images/{ticket}", content);
        response.EnsureSuccessStatusCode();
    }

    private async Task ZeroTargetAsync(string ticket)
    {
        using var content = new StringContent($$"""{"op":"zero","size":{{ProxyFixture.DefaultImageSize}},"flush":true}""");
        using var response = await proxy.Data.PatchAsync($"/images/{ticket}", content);
        response.EnsureSuccessStatusCode();
    }
}
