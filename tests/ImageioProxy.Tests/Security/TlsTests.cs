using ImageioProxy.Hosting;
using ImageioProxy.Tests.Support;
using Microsoft.Extensions.Configuration;
using TlsCertificates = TestSupport.TlsCertificates;

namespace ImageioProxy.Tests.Security;

/// <summary>The proxy with TLS on the remote listener, using a throw-away CA (TestSupport.TlsCertificates).</summary>
public sealed class TlsFixture : ProxyFixture, IAsyncLifetime
{
    private static readonly string CertificateDirectory = System.IO.Directory.CreateTempSubdirectory("imageio-proxy-tls-").FullName;

    public TlsFixture() : base("raw", 1024 * 1024, new Dictionary<string, string?>
    {
        ["Tls:Enable"] = "true",
        ["Tls:CertFile"] = Path.Combine(CertificateDirectory, "server", "server-cert.pem"),
        ["Tls:KeyFile"] = Path.Combine(CertificateDirectory, "server", "server-key.pem"),
    })
    {
    }

    public TlsCertificates Certificates { get; private set; } = null!;

    public int Port => Server.RemotePort!.Value;

    public new async Task InitializeAsync()
    {
        Certificates = await TlsCertificates.CreateAsync(CertificateDirectory);
        await base.InitializeAsync();
    }

    public new async Task DisposeAsync()
    {
        await base.DisposeAsync();
        System.IO.Directory.Delete(CertificateDirectory, recursive: true);
    }
}

/// <summary>TLS 1.2 is the floor (imageio-api.md §8 "Sane TLS minimum", ecosystem.md §5.1): older
/// handshakes are refused by the server, and TLS without a certificate refuses to start.</summary>
public class TlsTests(TlsFixture fixture) : IClassFixture<TlsFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);

    private async Task<ProcessResult> OpenSslAsync(params string[] protocol)
    {
        using var timeout = new CancellationTokenSource(Bound);
        // -msg shows what was sent: the ClientHello proves the client offered the old protocol, so a
        // failure is the server's refusal, not OpenSSL 3's own policy (SECLEVEL=0 lifts it).
        return await Processes.RunAsync("sh", ["-c", "port=$0; ca=$1; shift; exec openssl s_client -connect 127.0.0.1:\"$port\" -servername localhost -msg -CAfile \"$ca\" \"$@\" </dev/null 2>&1",
            fixture.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), fixture.Certificates.CaCertificate, .. protocol], cancellationToken: timeout.Token);
    }

    [Theory]
    [InlineData("-tls1_1")]
    [InlineData("-tls1")]
    public async Task Openssl_handshake_below_tls_1_2_is_refused(string protocol)
    {
        var result = await OpenSslAsync(protocol, "-cipher", "DEFAULT:@SECLEVEL=0");

        result.Stdout.Should().Contain("ClientHello", "the client offered the old protocol");
        result.Stdout.Should().NotContain("ServerHello", "the server must not accept it");
        result.Stdout.Should().Contain("Cipher is (NONE)");
    }

    [Fact]
    public async Task Openssl_handshake_with_tls_1_2_works()
    {
        var result = await OpenSslAsync("-tls1_2");

        result.Stdout.Should().Contain("ServerHello");
        result.Stdout.Should().MatchRegex(@"Protocol\s*: TLSv1\.2");
        result.Stdout.Should().Contain("Verify return code: 0 (ok)");
    }

    [Fact]
    public async Task Curl_with_tls_max_1_1_is_refused_and_with_tls_1_2_works()
    {
        var url = $"https://localhost:{fixture.Port}/info/";
        var resolve = $"localhost:{fixture.Port}:127.0.0.1";
        using var timeout = new CancellationTokenSource(Bound);

        var old = await Processes.RunAsync("curl", ["-sS", "-v", "--max-time", "30", "--resolve", resolve, "--cacert", fixture.Certificates.CaCertificate,
            "--tlsv1.0", "--tls-max", "1.1", "--ciphers", "DEFAULT:@SECLEVEL=0", "-o", "/dev/null", url], cancellationToken: timeout.Token);
        var current = await Processes.RunAsync("curl", ["-sS", "--max-time", "30", "--resolve", resolve, "--cacert", fixture.Certificates.CaCertificate,
            "--tlsv1.2", url], cancellationToken: timeout.Token);

        old.ExitCode.Should().Be(35, $"SSL connect error expected: {old.Stderr}");
        old.Stderr.Should().Contain("Client hello", "curl offered TLS <= 1.1");
        current.ExitCode.Should().Be(0, current.Stderr);
        current.Stdout.Should().Contain("\"version\"");
    }

    [Fact]
    public async Task Control_routes_are_404_on_the_tls_listener()
    {
        var id = await fixture.AddTicketAsync();
        using var timeout = new CancellationTokenSource(Bound);

        var result = await Processes.RunAsync("curl", ["-sS", "--max-time", "30", "--resolve", $"localhost:{fixture.Port}:127.0.0.1",
            "--cacert", fixture.Certificates.CaCertificate, "-w", "\n%{http_code}", "-X", "DELETE", $"https://localhost:{fixture.Port}/tickets/{id}"], cancellationToken: timeout.Token);

        result.Stdout.Should().EndWith("\n404");
        fixture.Server.Tickets.Find(id).Should().NotBeNull();
    }

    [Fact]
    public void Tls_without_a_certificate_refuses_to_be_created_with_a_clear_message()
    {
        var create = () => ProxyServer.Create([], config => config.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Tls:Enable"] = "true",
            ["Remote:Port"] = "0",
            ["Local:Enable"] = "false",
            ["Control:Enable"] = "false",
        }));

        create.Should().Throw<InvalidOperationException>().WithMessage("*TLS is enabled but Tls:CertFile or Tls:KeyFile is not set*");
    }

    [Fact]
    public async Task Service_with_tls_but_no_certificate_refuses_to_start()
    {
        // The real program, as systemd would start it: exit status 2 and one line saying what to set.
        var program = Path.Combine(AppContext.BaseDirectory, "ImageioProxy.dll");
        using var timeout = new CancellationTokenSource(Bound);

        var result = await Processes.RunAsync("dotnet", [program, "--Tls:Enable=true", "--Remote:Port=0", "--Local:Enable=false",
            "--Control:Socket=" + Path.Combine(fixture.Directory, "never.sock")], cancellationToken: timeout.Token);

        result.ExitCode.Should().Be(2, result.Stderr);
        result.Stderr.Should().Contain("Tls:CertFile or Tls:KeyFile is not set");
        result.Stderr.Should().NotContain("   at ", "an operator gets a message, not a stack trace");
        File.Exists(Path.Combine(fixture.Directory, "never.sock")).Should().BeFalse();
    }

    [Fact]
    public void Tls_with_a_missing_certificate_file_refuses_to_be_created()
    {
        var create = () => ProxyServer.Create([], config => config.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Tls:Enable"] = "true",
            ["Tls:CertFile"] = "/nonexistent/cert.pem",
            ["Tls:KeyFile"] = fixture.Certificates.ServerKey,
            ["Remote:Port"] = "0",
            ["Local:Enable"] = "false",
            ["Control:Enable"] = "false",
        }));

        create.Should().Throw<InvalidOperationException>().WithMessage("*Tls:CertFile=/nonexistent/cert.pem does not exist*");
    }
}
