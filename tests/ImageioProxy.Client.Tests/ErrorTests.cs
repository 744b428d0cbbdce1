using ImageioProxy.Client.Tests.Support;
using ImageioProxy.Tests.Support;
using TestSupport;

namespace ImageioProxy.Client.Tests;

/// <summary>Failures the client must report clearly: refused tickets, a target that is too small, a server
/// that is not there.</summary>
public sealed class ErrorTests(ProxyFixture proxy) : IClassFixture<ProxyFixture>, IDisposable
{
    private static readonly TimeSpan Bound = TimeSpan.FromMinutes(2);
    private readonly TempDirectory _directory = TempDirectory.Create("ipxc");

    public void Dispose() => _directory.Dispose();

    [Fact]
    public async Task Upload_ToAReadOnlyTicket_IsRefusedBeforeSendingData()
    {
        var (_, image) = await ClientTestImages.CreateAsync(_directory.Path, 4 * 1024 * 1024, seed: 21);
        var ticket = await proxy.AddTicketAsync(ops: ["read"]);

        var upload = () => ImageTransfers.UploadAsync(image, new Uri(proxy.ImageUrl(ticket)), new ImageioClientOptions(), new TransferProgress()).WaitAsync(Bound);

        var error = (await upload.Should().ThrowAsync<ImageioClientException>()).Which;
        error.Kind.Should().Be(ImageioErrorKind.Forbidden);
        error.Message.Should().Contain("does not allow writing").And.Contain("read-only");
        ClientTestImages.QemuNbdProcessesServing(image).Should().BeEmpty();
    }

    [Fact]
    public async Task Upload_ToAMissingTicket_Says403AndWhy()
    {
        var (_, image) = await ClientTestImages.CreateAsync(_directory.Path, 4 * 1024 * 1024, seed: 22);

        var upload = () => ImageTransfers.UploadAsync(image, new Uri(proxy.ImageUrl("no-such-ticket")), new ImageioClientOptions(), new TransferProgress()).WaitAsync(Bound);

        var error = (await upload.Should().ThrowAsync<ImageioClientException>()).Which;
        error.Kind.Should().Be(ImageioErrorKind.Forbidden);
        error.StatusCode.Should().Be(403);
        error.Message.Should().Contain("OPTIONS").And.Contain("No such ticket").And.Contain("expired");
    }

    [Fact]
    public async Task Upload_LargerThanTheTarget_IsRefusedAsTooSmall()
    {
        var (_, image) = await ClientTestImages.CreateAsync(_directory.Path, ProxyFixture.DefaultImageSize + (1024 * 1024), seed: 23);
        var ticket = await proxy.AddTicketAsync();

        var upload = () => ImageTransfers.UploadAsync(image, new Uri(proxy.ImageUrl(ticket)), new ImageioClientOptions(), new TransferProgress()).WaitAsync(Bound);

        var error = (await upload.Should().ThrowAsync<ImageioClientException>()).Which;
        error.Kind.Should().Be(ImageioErrorKind.ImageTooSmall);
        error.Message.Should().Contain("too small").And.Contain($"{ProxyFixture.DefaultImageSize} bytes");
    }

    [Fact]
    public async Task Put_BeyondTheImage_MapsThe416()
    {
        var ticket = await proxy.AddTicketAsync();
        using var client = await ImageioHttpClient.ConnectAsync(new Uri(proxy.ImageUrl(ticket)), new ImageioClientOptions()).WaitAsync(Bound);

        var put = () => client.PutAsync(ProxyFixture.DefaultImageSize - 10, new byte[20]).WaitAsync(Bound);

        var error = (await put.Should().ThrowAsync<ImageioClientException>()).Which;
        error.Kind.Should().Be(ImageioErrorKind.ImageTooSmall);
        error.StatusCode.Should().Be(416);
    }

    [Fact]
    public async Task Connect_ToNothing_IsAConnectionError()
    {
        // A port that was free a moment ago: nothing listens there.
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        var port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();

        var connect = () => ImageioHttpClient.ConnectAsync(new Uri($"http://127.0.0.1:{port}/images/x"), new ImageioClientOptions()).WaitAsync(Bound);

        var error = (await connect.Should().ThrowAsync<ImageioClientException>()).Which;
        error.Kind.Should().Be(ImageioErrorKind.ConnectionLost);
        error.Message.Should().Contain($"127.0.0.1:{port}");
    }

    [Fact]
    public async Task Download_ToAMissingDirectory_FailsWithoutTouchingTheServer()
    {
        var ticket = await proxy.AddTicketAsync();

        var download = () => ImageTransfers.DownloadAsync(new Uri(proxy.ImageUrl(ticket)), _directory.Combine("missing/copy.raw"), DownloadFormat.Raw,
            new ImageioClientOptions(), new TransferProgress()).WaitAsync(Bound);

        (await download.Should().ThrowAsync<ImageioClientException>()).Which.Kind.Should().Be(ImageioErrorKind.Local);
    }
}
