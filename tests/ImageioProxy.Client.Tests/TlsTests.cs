using ImageioProxy.Client.Tests.Support;
using ImageioProxy.Tests.Support;
using TestSupport;

namespace ImageioProxy.Client.Tests;

/// <summary>The proxy with TLS on (a certificate for localhost signed by a test CA).</summary>
public sealed class TlsProxyFixture : ProxyFixture, IAsyncLifetime
{
    public TlsProxyFixture() : this(CreateCertificates()) { }

    private TlsProxyFixture(TlsCertificates certificates) : base("raw", settings: new Dictionary<string, string?>
    {
        ["Tls:Enable"] = "true",
        ["Tls:CertFile"] = certificates.ServerCertificate,
        ["Tls:KeyFile"] = certificates.ServerKey,
    })
    {
        Certificates = certificates;
    }

    public TlsCertificates Certificates { get; }

    public string HttpsImageUrl(string ticket) => $"https://localhost:{Server.RemotePort}/images/{ticket}";

    Task IAsyncLifetime.InitializeAsync() => InitializeAsync();

    async Task IAsyncLifetime.DisposeAsync()
    {
        await DisposeAsync();
        System.IO.Directory.Delete(Certificates.Directory, recursive: true);
    }

    // xunit builds fixtures synchronously; openssl runs once per test class.
    private static TlsCertificates CreateCertificates() =>
        TlsCertificates.CreateAsync(System.IO.Directory.CreateTempSubdirectory("ipxc-tls-").FullName).GetAwaiter().GetResult();
}

public sealed class TlsTests(TlsProxyFixture proxy) : IClassFixture<TlsProxyFixture>, IDisposable
{
    private static readonly TimeSpan Bound = TimeSpan.FromMinutes(2);
    private readonly TempDirectory _directory = TempDirectory.Create("ipxc");

    public void Dispose() => _directory.Dispose();

    [Fact]
    public async Task Upload_OverHttps_WithTheCaFile_Works()
    {
        var (raw, image) = await ClientTestImages.CreateAsync(_directory.Path, ProxyFixture.DefaultImageSize, seed: 31);
        var ticket = await proxy.AddTicketAsync();
        // Stay on TLS: the unix socket would bypass it.
        var options = new ImageioClientOptions { CaFile = proxy.Certificates.CaCertificate, UseUnixSocket = false };

        await ImageTransfers.UploadAsync(image, new Uri(proxy.HttpsImageUrl(ticket)), options, new TransferProgress()).WaitAsync(Bound);

        (await QemuImg.CompareAsync(raw, proxy.NbdUri)).Identical.Should().BeTrue();
    }

    [Fact]
    public async Task Connect_WithTheWrongCa_SaysTheCertificateIsNotTrusted()
    {
        var ticket = await proxy.AddTicketAsync();
        var options = new ImageioClientOptions { CaFile = proxy.Certificates.WrongCaCertificate };

        var connect = () => ImageioHttpClient.ConnectAsync(new Uri(proxy.HttpsImageUrl(ticket)), options).WaitAsync(Bound);

        var error = (await connect.Should().ThrowAsync<ImageioClientException>()).Which;
        error.Kind.Should().Be(ImageioErrorKind.Certificate);
        error.Message.Should().Contain("not signed by a CA in").And.Contain(proxy.Certificates.WrongCaCertificate);
    }

    [Fact]
    public async Task Connect_WithoutCaFile_SuggestsCaFileOrInsecure()
    {
        var ticket = await proxy.AddTicketAsync();

        var connect = () => ImageioHttpClient.ConnectAsync(new Uri(proxy.HttpsImageUrl(ticket)), new ImageioClientOptions()).WaitAsync(Bound);

        var error = (await connect.Should().ThrowAsync<ImageioClientException>()).Which;
        error.Kind.Should().Be(ImageioErrorKind.Certificate);
        error.Message.Should().Contain("--cafile").And.Contain("--insecure");
    }

    [Fact]
    public async Task Insecure_SkipsVerification()
    {
        var ticket = await proxy.AddTicketAsync();

        using var client = await ImageioHttpClient.ConnectAsync(new Uri(proxy.HttpsImageUrl(ticket)), new ImageioClientOptions { Insecure = true, UseUnixSocket = false })
            .WaitAsync(Bound);

        client.Server.CanZero.Should().BeTrue();
    }
}
