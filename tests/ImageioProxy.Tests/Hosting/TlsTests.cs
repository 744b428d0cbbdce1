using System.Diagnostics;
using ImageioProxy.Tests.Support;

namespace ImageioProxy.Tests.Hosting;

/// <summary>The proxy with TLS on the remote service, using a self-signed certificate made by openssl.</summary>
public sealed class TlsProxyFixture : ProxyFixture, IAsyncLifetime
{
    public TlsProxyFixture() : this(CreateCertificate()) { }

    private TlsProxyFixture((string Cert, string Key) files)
        : base("raw", settings: new Dictionary<string, string?>
        {
            ["Tls:Enable"] = "true",
            ["Tls:CertFile"] = files.Cert,
            ["Tls:KeyFile"] = files.Key,
        })
        => CertFile = files.Cert;

    public string CertFile { get; }

    public string HttpsUrl(string ticketId) => $"https://127.0.0.1:{Server.RemotePort}/images/{ticketId}";

    /// <summary>Also removes the throw-away certificate and its private key.</summary>
    public new async Task DisposeAsync()
    {
        await base.DisposeAsync();
        System.IO.Directory.Delete(Path.GetDirectoryName(CertFile)!, recursive: true);
    }

    private static (string Cert, string Key) CreateCertificate()
    {
        var directory = System.IO.Directory.CreateTempSubdirectory("imageio-proxy-tls-").FullName;
        var cert = Path.Combine(directory, "cert.pem");
        var key = Path.Combine(directory, "key.pem");
        using var openssl = Process.Start("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert]);
        openssl.WaitForExit();
        return openssl.ExitCode == 0 ? (cert, key) : throw new InvalidOperationException("openssl req failed");
    }
}

public class TlsTests(TlsProxyFixture fixture) : IClassFixture<TlsProxyFixture>
{
    [Fact]
    public async Task Remote_service_speaks_tls_with_a_verified_certificate()
    {
        var id = await fixture.AddTicketAsync();

        var options = await fixture.CurlAsync("--cacert", fixture.CertFile, "-X", "OPTIONS", fixture.HttpsUrl(id));

        options.Status.Should().Be(200, options.Stderr);
        options.Header("allow").Should().Be("OPTIONS,GET,PUT,PATCH");
    }

    [Fact]
    public async Task Tls_below_1_2_is_refused()
    {
        var id = await fixture.AddTicketAsync();

        var old = await fixture.CurlAsync("-k", "--tlsv1.0", "--tls-max", "1.1", "-X", "OPTIONS", fixture.HttpsUrl(id));

        old.Status.Should().Be(0, "the handshake fails");
    }
}
