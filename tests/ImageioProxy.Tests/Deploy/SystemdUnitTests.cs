using System.Globalization;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;
using TestSupport;

namespace ImageioProxy.Tests.Deploy;

/// <summary>deploy/systemd: the unit passes systemd-analyze (syntax and hardening score), and the
/// published service started with the unit's ExecStart and example configuration tells systemd
/// READY=1 only once its control socket accepts tickets, and STOPPING=1 on SIGTERM.</summary>
[Collection(PublishedAppCollection.Name)]
public partial class SystemdUnitTests(PublishedApp app)
{
    private const string Unit = "deploy/systemd/imageio-proxy.service";

    [Fact]
    public void The_unit_is_type_notify_with_a_dedicated_user_a_runtime_directory_and_hardening()
    {
        var settings = ReadUnit();

        settings["Type"].Should().Be("notify");
        settings["User"].Should().Be("imageio-proxy");
        settings["RuntimeDirectory"].Should().Be("imageio-proxy");
        settings["NoNewPrivileges"].Should().Be("yes");
        settings["ProtectSystem"].Should().Be("strict");
        settings["PrivateTmp"].Should().Be("yes");
        settings["CapabilityBoundingSet"].Should().BeEmpty();
        settings["ExecStart"].Should().StartWith("/usr/lib/imageio-proxy/ImageioProxy --ConfigFile=/etc/imageio-proxy/imageio-proxy.json");
        File.ReadAllText(DeployFiles.Path("deploy/systemd/imageio-proxy.sysusers.conf")).Should().Contain("u imageio-proxy ");
    }

    [Fact]
    public async Task Systemd_analyze_verifies_the_unit_and_rates_its_exposure_ok()
    {
        using var dir = TempDirectory.Create("ipx-unit");
        var unit = dir.Combine("imageio-proxy.service");
        await File.WriteAllTextAsync(unit, File.ReadAllText(DeployFiles.Path(Unit)).Replace("/usr/lib/imageio-proxy/ImageioProxy", app.Executable, StringComparison.Ordinal));

        var verify = await ExternalProcess.RunAsync("systemd-analyze", ["verify", "--man=no", unit], TimeSpan.FromMinutes(1));
        var security = await ExternalProcess.RunAsync("systemd-analyze", ["security", "--offline=yes", "--no-pager", unit], TimeSpan.FromMinutes(1));

        verify.ExitCode.Should().Be(0, verify.ToString());
        (verify.StandardOutput + verify.StandardError).Trim().Should().BeEmpty(verify.ToString());
        var exposure = ExposureLine().Match(security.StandardOutput);
        exposure.Success.Should().BeTrue(security.ToString());
        double.Parse(exposure.Groups[1].Value, CultureInfo.InvariantCulture).Should().BeLessThanOrEqualTo(2.0, security.StandardOutput);
    }

    [Fact]
    public async Task Ready_is_notified_after_the_control_socket_listens_and_stopping_on_sigterm()
    {
        using var dir = TempDirectory.Create("ipx-sd");
        var runtime = dir.CreateSubdirectory("run");
        var config = dir.Combine("imageio-proxy.json");
        File.Copy(DeployFiles.Path("deploy/systemd/imageio-proxy.json"), config);
        var notifySocket = dir.Combine("notify.sock");
        using var notify = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        notify.Bind(new UnixDomainSocketEndPoint(notifySocket));
        var execStart = ReadUnit()["ExecStart"].Split(' ')
            .Select(a => a.Replace("/usr/lib/imageio-proxy/ImageioProxy", app.Executable, StringComparison.Ordinal)
                .Replace("/etc/imageio-proxy/imageio-proxy.json", config, StringComparison.Ordinal)).ToList();
        // The example configuration as is, except what a shared test machine needs: free ports, no TLS
        // certificate, sockets in the test's own RuntimeDirectory.
        var environment = new Dictionary<string, string?>
        {
            ["NOTIFY_SOCKET"] = notifySocket,
            ["Remote__Host"] = "127.0.0.1",
            ["Remote__Port"] = "0",
            ["Tls__Enable"] = "false",
            ["Local__Socket"] = Path.Combine(runtime, "local.sock"),
            ["Control__Socket"] = Path.Combine(runtime, "sock"),
            ["Monitoring__Port"] = "0",
        };

        await using var service = ExternalProcess.Start(execStart[0], execStart.Skip(1), new ExternalProcessOptions { Environment = environment });
        var ready = await ReceiveAsync(notify, service);

        ready.Should().Contain("READY=1");
        // By then the control socket accepts a ticket.
        using (var control = ImageioProxy.Tests.Support.ProxyFixture.UnixClient(Path.Combine(runtime, "sock")))
        {
            using var put = await control.PutAsync($"/tickets/{Guid.NewGuid()}", new StringContent(
                """{"uuid":"x","size":1024,"ops":["read"],"timeout":60,"url":"nbd:unix:/nonexistent.sock"}""".Replace("\"x\"", $"\"{Guid.NewGuid()}\"", StringComparison.Ordinal)));
            ((int)put.StatusCode).Should().Be(200, await put.Content.ReadAsStringAsync());
        }
        service.Kill(ProcessSignal.Terminate);
        var stopping = await ReceiveAsync(notify, service, allowExit: true);
        stopping.Should().Contain("STOPPING=1");
        (await service.WaitForExitAsync(TimeSpan.FromSeconds(60))).Should().Be(0, service.Describe());
    }

    private static async Task<string> ReceiveAsync(Socket socket, ExternalProcess service, bool allowExit = false)
    {
        var buffer = new byte[4096];
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        try
        {
            var n = await socket.ReceiveAsync(buffer, SocketFlags.None, timeout.Token);
            return Encoding.UTF8.GetString(buffer, 0, n);
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"no sd_notify message within 30 s (exited: {service.HasExited && !allowExit}). {service.Describe()}");
        }
    }

    private static Dictionary<string, string> ReadUnit()
    {
        var settings = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var line in File.ReadAllLines(DeployFiles.Path(Unit)))
        {
            var trimmed = line.Trim();
            if (trimmed.Length == 0 || trimmed[0] is '#' or '[')
            {
                continue;
            }
            var eq = trimmed.IndexOf('=', StringComparison.Ordinal);
            settings[trimmed[..eq]] = trimmed[(eq + 1)..];
        }
        return settings;
    }

    [GeneratedRegex(@"Overall exposure level for \S+: ([0-9.]+)")]
    private static partial Regex ExposureLine();
}
