using TestSupport;

namespace NbdClient.Tests.TestSupport;

public class NbdServerTests
{
    private const long ImageSize = 8 * 1024 * 1024;

    [Fact]
    public async Task QemuNbd_ServesTheImage_AndNbdinfoSeesIt()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", ImageSize);

        await using var server = await QemuNbdServer.StartAsync(image);

        server.Uri.Should().Be($"nbd+unix:///?socket={server.SocketPath}");
        server.ImageioUrl.Should().Be($"nbd:unix:{server.SocketPath}");
        server.Process.CommandLine.Should().Contain("--persistent").And.Contain("--shared=8").And.Contain("--cache=none");
        using var info = await NbdInfo.GetJsonAsync(server.Uri);
        var export = info.RootElement.GetProperty("exports")[0];
        export.GetProperty("export-size").GetInt64().Should().Be(ImageSize);
        export.GetProperty("can_multi_conn").GetBoolean().Should().BeTrue();
        export.GetProperty("is_read_only").GetBoolean().Should().BeFalse();
    }

    [Fact]
    public async Task QemuNbd_NamedExportOverTcp_ReadOnly()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.qcow2");
        await QemuImg.CreateAsync(image, "qcow2", ImageSize);

        await using var server = await QemuNbdServer.StartAsync(image, new QemuNbdOptions { Format = "qcow2", ExportName = "disk 1", Tcp = true, ReadOnly = true });

        server.TcpPort.Should().BeGreaterThan(0);
        server.Uri.Should().Be($"nbd://127.0.0.1:{server.TcpPort}/disk%201");
        server.ImageioUrl.Should().Be($"nbd:127.0.0.1:{server.TcpPort}:exportname=disk 1");
        using var info = await NbdInfo.GetJsonAsync(server.Uri);
        var export = info.RootElement.GetProperty("exports")[0];
        export.GetProperty("export-name").GetString().Should().Be("disk 1");
        export.GetProperty("export-size").GetInt64().Should().Be(ImageSize);
        export.GetProperty("is_read_only").GetBoolean().Should().BeTrue();
    }

    [Fact]
    public async Task QemuNbd_NotPersistent_StartupDoesNotConsumeTheOnlyClient()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", ImageSize);

        await using var server = await QemuNbdServer.StartAsync(image, new QemuNbdOptions { Persistent = false, Shared = 1 });

        (await NbdInfo.GetSizeAsync(server.Uri)).Should().Be(ImageSize);
        // Without --persistent qemu-nbd exits after its first client: that must have been nbdinfo.
        (await server.Process.WaitForExitAsync(TimeSpan.FromSeconds(30))).Should().Be(0);
    }

    [Fact]
    public async Task QemuNbd_StartFailure_ReportsQemuNbdsMessage()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", ImageSize);

        var act = () => QemuNbdServer.StartAsync(image, new QemuNbdOptions { Format = "no-such-format" });

        (await act.Should().ThrowAsync<ExternalProcessException>()).WithMessage("*qemu-nbd*no-such-format*");
    }

    [Fact]
    public async Task QemuNbd_Tls_AcceptsTheRightCaOnly()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", ImageSize);
        var certificates = await TlsCertificates.CreateAsync(dir.Combine("tls"));

        await using var server = await QemuNbdServer.StartAsync(image, new QemuNbdOptions { TlsCertificatesDirectory = certificates.ServerDirectory, Tcp = true });

        server.Uri.Should().StartWith("nbds://127.0.0.1:");
        (await NbdInfo.GetSizeAsync($"{server.Uri}?tls-certificates={certificates.CaOnlyDirectory}")).Should().Be(ImageSize);
        var wrong = await NbdInfo.RunAsync(["--size", $"{server.Uri}?tls-certificates={certificates.WrongCaDirectory}"]);
        wrong.ExitCode.Should().NotBe(0, wrong.ToString());
        var plain = await NbdInfo.RunAsync(["--size", $"nbd://127.0.0.1:{server.TcpPort}/"]);
        plain.ExitCode.Should().NotBe(0, plain.ToString());
    }

    [Fact]
    public async Task Nbdkit_LogFilter_RecordsRequests()
    {
        await using var server = await NbdkitServer.StartAsync(["memory", "16M"], new NbdkitOptions { Filters = ["log"] });

        server.Uri.Should().StartWith("nbd+unix:///?socket=");
        (await NbdInfo.GetSizeAsync(server.Uri)).Should().Be(16 * 1024 * 1024);
        await NbdInfo.RunAsync(["--map", server.Uri]);

        server.LogFilePath.Should().StartWith(server.WorkDirectory);
        var log = await server.ReadLogAsync();
        log.Should().Contain("connection=1").And.Contain("Extents");
    }

    [Fact]
    public async Task Nbdkit_PauseFilter_PausesAndResumes()
    {
        await using var server = await NbdkitServer.StartAsync(["memory", "16M"], new NbdkitOptions { Filters = ["pause"] });

        server.PauseControlPath.Should().NotBeNull();
        await server.PauseAsync();
        await server.ResumeAsync();
        (await NbdInfo.GetSizeAsync(server.Uri)).Should().Be(16 * 1024 * 1024);
    }

    [Fact]
    public async Task Nbdkit_WithoutPauseFilter_PauseIsRefused()
    {
        await using var server = await NbdkitServer.StartAsync(["memory", "1M"]);

        var act = () => server.PauseAsync();

        await act.Should().ThrowAsync<InvalidOperationException>().WithMessage("*without --filter=pause*");
    }

    [Fact]
    public async Task Nbdkit_ExitLast_StartupDoesNotConnect()
    {
        await using var server = await NbdkitServer.StartAsync(["memory", "1M"], new NbdkitOptions { Filters = ["exitlast"] });

        (await NbdInfo.GetSizeAsync(server.Uri)).Should().Be(1024 * 1024);
        (await server.Process.WaitForExitAsync(TimeSpan.FromSeconds(30))).Should().Be(0);
    }

    [Fact]
    public async Task Nbdkit_TlsX509OverTcp_VerifiesTheServerCertificate()
    {
        using var dir = TempDirectory.Create();
        var certificates = await TlsCertificates.CreateAsync(dir.Combine("tls"));

        await using var server = await NbdkitServer.StartAsync(["memory", "1M"], new NbdkitOptions { TlsCertificatesDirectory = certificates.ServerDirectory, Tcp = true });

        (await NbdInfo.GetSizeAsync($"nbds://localhost:{server.TcpPort}/?tls-certificates={certificates.ClientDirectory}")).Should().Be(1024 * 1024);
        var wrong = await NbdInfo.RunAsync(["--size", $"nbds://localhost:{server.TcpPort}/?tls-certificates={certificates.WrongCaDirectory}"]);
        wrong.ExitCode.Should().NotBe(0);
        wrong.StandardError.Should().Contain("certificate");
    }

    [Fact]
    public async Task Nbdkit_TlsPsk_OverUnixSocket()
    {
        using var dir = TempDirectory.Create();
        var psk = await TlsCertificates.CreatePskFileAsync(dir.Combine("psk"), "alice");

        await using var server = await NbdkitServer.StartAsync(["memory", "1M"], new NbdkitOptions { TlsPskFile = psk });

        server.Uri.Should().StartWith("nbds+unix:///?socket=");
        (await NbdInfo.GetSizeAsync($"nbds+unix://alice@/?socket={server.SocketPath}&tls-psk-file={psk}")).Should().Be(1024 * 1024);
    }

    [Fact]
    public async Task Kill_Sigkill_ServerDiesWith137()
    {
        await using var server = await NbdkitServer.StartAsync(["memory", "1M"]);

        server.Kill();

        (await server.Process.WaitForExitAsync(TimeSpan.FromSeconds(30))).Should().Be(137);
    }
}
