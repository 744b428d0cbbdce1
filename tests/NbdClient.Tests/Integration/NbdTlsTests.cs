using TestSupport;

namespace NbdClient.Tests.Integration;

/// <summary>NBD over TLS (STARTTLS, X.509). The server certificate is always verified, also over unix
/// sockets, where libnbd does not (nbd-fault-injection.md §13).</summary>
public class NbdTlsTests : IAsyncLifetime
{
    private readonly TempDirectory _dir = TempDirectory.Create();
    private TlsCertificates _certificates = null!;

    public async Task InitializeAsync() => _certificates = await TlsCertificates.CreateAsync(_dir.CreateSubdirectory("tls"));

    public Task DisposeAsync()
    {
        _dir.Dispose();
        return Task.CompletedTask;
    }

    private static NbdClientOptions Trusting(string caFile, string? clientCertificate = null, string? clientKey = null) =>
        new() { Tls = new NbdTlsOptions { CaFile = caFile, ClientCertificateFile = clientCertificate, ClientKeyFile = clientKey } };

    [Fact]
    public async Task TlsWithTheRightCa_Works_OverAUnixSocket()
    {
        await using var server = await NbdkitServer.StartAsync(["memory", "64M"], new NbdkitOptions { TlsCertificatesDirectory = _certificates.ServerDirectory });
        // Zero-copy writes asked for: TLS encrypts into its own buffers, so they must quietly not apply.
        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server, tls: true), Trusting(_certificates.CaCertificate) with { ZeroCopyWrites = true });
        connection.Export.Tls.Should().BeTrue();
        connection.SendsByReference.Should().BeFalse();
        connection.Export.StructuredReplies.Should().BeTrue("options are renegotiated after STARTTLS");
        var data = Endpoints.RandomBytes(5 << 20, 11);
        await connection.WriteAsync(4096, data);
        var back = new byte[data.Length];
        await connection.ReadAsync(4096, back);
        back.Should().Equal(data);
        await connection.DisconnectAsync();
    }

    [Fact]
    public async Task WrongCa_IsRejected_EvenOverAUnixSocket()
    {
        await using var server = await NbdkitServer.StartAsync(["memory", "64M"], new NbdkitOptions { TlsCertificatesDirectory = _certificates.ServerDirectory });
        var act = () => NbdConnection.ConnectAsync(Endpoints.Of(server, tls: true), Trusting(_certificates.WrongCaCertificate));
        var failure = (await act.Should().ThrowAsync<NbdConnectionException>()).Which;
        failure.Reason.Should().Be(NbdConnectionFailure.TlsFailed);
        failure.Phase.Should().Be(NbdPhase.Tls);
    }

    [Fact]
    public async Task WrongHostname_IsRejected()
    {
        await using var server = await NbdkitServer.StartAsync(["memory", "64M"], new NbdkitOptions { TlsCertificatesDirectory = _certificates.ServerDirectory });
        var act = () => NbdConnection.ConnectAsync(Endpoints.Of(server, tls: true) with { TlsHostname = "not-the-server.example" }, Trusting(_certificates.CaCertificate));
        (await act.Should().ThrowAsync<NbdConnectionException>()).Which.Reason.Should().Be(NbdConnectionFailure.TlsFailed);
    }

    [Fact]
    public async Task TlsOnlyServer_WithoutTls_SaysTlsIsRequired()
    {
        await using var server = await NbdkitServer.StartAsync(["memory", "64M"], new NbdkitOptions { TlsCertificatesDirectory = _certificates.ServerDirectory });
        var act = () => NbdConnection.ConnectAsync(Endpoints.Of(server, tls: false));
        var failure = (await act.Should().ThrowAsync<NbdConnectionException>()).Which;
        failure.Reason.Should().Be(NbdConnectionFailure.TlsRequired);
        failure.Message.Should().Contain("nbds");
    }

    [Fact]
    public async Task RequiredTls_AgainstAPlainServer_Fails()
    {
        await using var server = await NbdkitServer.StartAsync(["memory", "64M"]);
        var act = () => NbdConnection.ConnectAsync(Endpoints.Of(server, tls: true), Trusting(_certificates.CaCertificate));
        (await act.Should().ThrowAsync<NbdConnectionException>()).Which.Reason.Should().Be(NbdConnectionFailure.TlsUnavailable);
    }

    [Fact]
    public async Task QemuNbdWithVerifyPeer_NeedsAClientCertificate()
    {
        var image = _dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", 16 << 20);
        await using var server = await QemuNbdServer.StartAsync(image, new QemuNbdOptions { TlsCertificatesDirectory = _certificates.ServerDirectory, TlsVerifyPeer = true });

        var withoutCertificate = () => NbdConnection.ConnectAsync(Endpoints.Of(server, tls: true), Trusting(_certificates.CaCertificate));
        var failure = (await withoutCertificate.Should().ThrowAsync<NbdConnectionException>()).Which;
        failure.Reason.Should().BeOneOf(NbdConnectionFailure.TlsFailed, NbdConnectionFailure.ConnectionClosed, NbdConnectionFailure.IOError);

        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server, tls: true),
            Trusting(_certificates.CaCertificate, _certificates.ClientCertificate, _certificates.ClientKey));
        connection.Export.Tls.Should().BeTrue();
        await connection.WriteAsync(0, new byte[4096]);
        await connection.FlushAsync();
    }
}
