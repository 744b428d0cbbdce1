using ImageioProxy.Client.Tests.Support;
using TestSupport;

namespace ImageioProxy.Client.Tests;

/// <summary>Behaviour that needs a server ours cannot be configured to be: without "zero", without
/// max_writers, or holding requests so that the client is interrupted mid-transfer.</summary>
public sealed class StubServerTests : IDisposable
{
    private const long Size = 16 * 1024 * 1024;
    private static readonly TimeSpan Bound = TimeSpan.FromMinutes(2);
    private readonly TempDirectory _directory = TempDirectory.Create("ipxc");
    private readonly List<string> _warnings = [];

    public void Dispose() => _directory.Dispose();

    private ImageioClientOptions Options() => new() { ChunkSize = 1024 * 1024, Warning = _warnings.Add };

    [Fact]
    public async Task Upload_ToAServerWithoutZero_SendsZeroesAsData()
    {
        await using var stub = await StubImageioServer.StartAsync(Size, ["checksum", "extents", "flush"]);
        Array.Fill(stub.Image, (byte)0x77);
        var (raw, image) = await ClientTestImages.CreateAsync(_directory.Path, Size, seed: 41);

        await ImageTransfers.UploadAsync(image, new Uri(stub.Url()), Options(), new TransferProgress()).WaitAsync(Bound);

        var copy = _directory.Combine("stub.raw");
        await File.WriteAllBytesAsync(copy, stub.Image);
        (await QemuImg.CompareAsync(raw, copy)).Identical.Should().BeTrue();
        stub.Requests.Should().NotContain("PATCH zero");
        stub.Requests.Should().ContainSingle(r => r == "PATCH flush");
        stub.Requests.Last().Should().Be("PATCH flush");
    }

    [Fact]
    public async Task Upload_ToAServerWithoutFlush_WarnsAndDoesNotFlush()
    {
        await using var stub = await StubImageioServer.StartAsync(Size, ["extents", "zero"]);
        var (raw, image) = await ClientTestImages.CreateAsync(_directory.Path, Size, seed: 42);

        await ImageTransfers.UploadAsync(image, new Uri(stub.Url()), Options(), new TransferProgress()).WaitAsync(Bound);

        _warnings.Should().ContainSingle(w => w.Contains("does not support flush", StringComparison.Ordinal));
        stub.Requests.Should().NotContain("PATCH flush");
        var copy = _directory.Combine("stub.raw");
        await File.WriteAllBytesAsync(copy, stub.Image);
        (await QemuImg.CompareAsync(raw, copy)).Identical.Should().BeTrue();
    }

    [Fact]
    public async Task Options_WithoutMaxWriters_MeansOneWriter()
    {
        await using var stub = await StubImageioServer.StartAsync(Size, ["extents"]);

        using var client = await ImageioHttpClient.ConnectAsync(new Uri(stub.Url()), Options()).WaitAsync(Bound);

        client.Server.MaxWriters.Should().Be(1);
        client.Server.MaxReaders.Should().Be(1);
        client.Server.CanZero.Should().BeFalse();
        client.UsesUnixSocket.Should().BeFalse();
    }

    [Fact]
    public async Task Upload_Cancelled_MidTransfer_ThrowsAndStopsItsQemuNbd()
    {
        await using var stub = await StubImageioServer.StartAsync(Size, ["extents", "zero", "flush"]);
        stub.BlockPutsFrom = 3;
        var (_, image) = await ClientTestImages.CreateAsync(_directory.Path, Size, seed: 43, zeroFraction: 0);
        using var cancel = new CancellationTokenSource();
        var progress = new TransferProgress();

        var upload = ImageTransfers.UploadAsync(image, new Uri(stub.Url()), Options(), progress, cancellationToken: cancel.Token);
        await stub.RequestBlocked.Task.WaitAsync(Bound);
        ClientTestImages.QemuNbdProcessesServing(image).Should().ContainSingle("the client reads the image through its own qemu-nbd");
        await cancel.CancelAsync();

        await FluentActions.Awaiting(() => upload.WaitAsync(Bound)).Should().ThrowAsync<OperationCanceledException>();
        progress.Transferred.Should().BeLessThan(Size);
        progress.Phase.Should().Be("uploading image");
        stub.Requests.Should().NotContain("PATCH flush");
        ClientTestImages.QemuNbdProcessesServing(image).Should().BeEmpty();
    }

    [Theory]
    [InlineData(DownloadFormat.Raw)]
    [InlineData(DownloadFormat.Qcow2)]
    public async Task Download_Cancelled_MidTransfer_LeavesNoFile(DownloadFormat format)
    {
        await using var stub = await StubImageioServer.StartAsync(Size, ["extents"]);
        new Random(44).NextBytes(stub.Image);
        stub.BlockGetsFrom = 2;
        var destination = _directory.Combine("copy.img");
        using var cancel = new CancellationTokenSource();

        var download = ImageTransfers.DownloadAsync(new Uri(stub.Url()), destination, format, Options(), new TransferProgress(), cancel.Token);
        await stub.RequestBlocked.Task.WaitAsync(Bound);
        Directory.GetFiles(_directory.Path, ".copy.img.*.part").Should().ContainSingle("the download writes to a temporary name");
        await cancel.CancelAsync();

        await FluentActions.Awaiting(() => download.WaitAsync(Bound)).Should().ThrowAsync<OperationCanceledException>();
        Directory.GetFiles(_directory.Path).Should().BeEmpty();
        ClientTestImages.QemuNbdProcessesServing(_directory.Path).Should().BeEmpty();
    }

    [Fact]
    public async Task Download_FromAServerWithoutExtents_CopiesEverything()
    {
        await using var stub = await StubImageioServer.StartAsync(Size, []);
        var random = new Random(45);
        var content = new byte[Size];
        random.NextBytes(content.AsSpan(0, (int)(Size / 2)));
        content.CopyTo(stub.Image, 0);
        var destination = _directory.Combine("copy.raw");

        await ImageTransfers.DownloadAsync(new Uri(stub.Url()), destination, DownloadFormat.Raw, Options(), new TransferProgress()).WaitAsync(Bound);

        (await File.ReadAllBytesAsync(destination)).Should().Equal(content);
        stub.Requests.Should().NotContain("GET extents");
    }
}
