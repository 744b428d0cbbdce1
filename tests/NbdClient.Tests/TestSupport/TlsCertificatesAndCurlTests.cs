using System.Net;
using System.Net.Sockets;
using System.Text;
using TestSupport;

namespace NbdClient.Tests.TestSupport;

public class TlsCertificatesAndCurlTests
{
    [Fact]
    public async Task TlsCertificates_VerifyAgainstTheirCa_NotAgainstTheWrongOne()
    {
        using var dir = TempDirectory.Create();
        var certificates = await TlsCertificates.CreateAsync(dir.Combine("tls"));

        foreach (var file in new[] { "ca-cert.pem", "server-cert.pem", "server-key.pem" })
        {
            File.Exists(Path.Combine(certificates.ServerDirectory, file)).Should().BeTrue(file);
        }

        (await OpenSsl("verify", "-purpose", "sslserver", "-CAfile", certificates.CaCertificate, certificates.ServerCertificate)).ExitCode.Should().Be(0);
        (await OpenSsl("verify", "-purpose", "sslclient", "-CAfile", certificates.CaCertificate, certificates.ClientCertificate)).ExitCode.Should().Be(0);
        (await OpenSsl("verify", "-CAfile", certificates.WrongCaCertificate, certificates.ServerCertificate)).ExitCode.Should().NotBe(0);
        (await OpenSsl("verify", "-CAfile", certificates.CaCertificate, certificates.WrongClientCertificate)).ExitCode.Should().NotBe(0);
        var san = await OpenSsl("x509", "-noout", "-ext", "subjectAltName", "-in", certificates.ServerCertificate);
        san.StandardOutput.Should().Contain("DNS:localhost").And.Contain("IP Address:127.0.0.1");
    }

    [Fact]
    public async Task Curl_CapturesStatusHeadersAndBody()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        var serve = Task.Run(async () =>
        {
            using var client = await listener.AcceptTcpClientAsync();
            var stream = client.GetStream();
            var buffer = new byte[4096];
            var request = new StringBuilder();
            while (!request.ToString().Contains("\r\n\r\n", StringComparison.Ordinal))
            {
                var n = await stream.ReadAsync(buffer);
                if (n == 0)
                {
                    break;
                }

                request.Append(Encoding.ASCII.GetString(buffer, 0, n));
            }

            await stream.WriteAsync(Encoding.ASCII.GetBytes("HTTP/1.1 206 Partial Content\r\nX-Test: yes\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"));
            return request.ToString();
        });

        var result = await Curl.RunAsync(["-H", "Range: bytes=0-4", $"http://127.0.0.1:{port}/images/t1"]);

        result.ExitCode.Should().Be(0, result.ToString());
        result.StatusCode.Should().Be(206);
        result.Header("x-test").Should().Be("yes");
        result.BodyText.Should().Be("hello");
        (await serve).Should().StartWith("GET /images/t1 HTTP/1.1").And.Contain("Range: bytes=0-4");
    }

    [Fact]
    public async Task Curl_ConnectionRefused_ReportsCurlExitCode()
    {
        int port;
        using (var listener = new TcpListener(IPAddress.Loopback, 0))
        {
            listener.Start();
            port = ((IPEndPoint)listener.LocalEndpoint).Port;
        }

        var result = await Curl.GetAsync($"http://127.0.0.1:{port}/");

        result.ExitCode.Should().Be(7, result.ToString());
        result.StatusCode.Should().Be(0);
    }

    private static Task<ProcessResult> OpenSsl(params string[] args) => ExternalProcess.RunAsync("openssl", args);
}
