using System.Net;
using ImageioProxy.Hosting;
using ImageioProxy.Tests.Support;
using Microsoft.Extensions.Configuration;

namespace ImageioProxy.Tests.Hosting;

/// <summary>X-Forwarded-* from a proxy that is not configured are ignored.</summary>
public sealed class UntrustedProxyFixture : MonitoredProxyFixture
{
    public UntrustedProxyFixture() : base(new Dictionary<string, string?> { ["ForwardedHeaders:KnownProxies:0"] = "192.0.2.1" })
    {
    }
}

public class ForwardedHeadersTests(UntrustedProxyFixture fixture) : IClassFixture<UntrustedProxyFixture>
{
    [Fact]
    public async Task Forwarded_headers_from_an_unlisted_proxy_are_ignored()
    {
        var transfer = $"untrusted-{Guid.NewGuid():N}";
        var id = await fixture.AddTicketAsync(changes: t => t["transfer_id"] = transfer);

        (await fixture.CurlAsync("-X", "OPTIONS", "-H", "X-Forwarded-For: 198.51.100.7", "-H", "X-Forwarded-Proto: https", fixture.ImageUrl(id)))
            .Status.Should().Be(200);

        var close = await fixture.Logs.WaitForAsync(e => e.EventId.Id == 6001 && (string?)e["TransferId"] == transfer);
        ((string)close["Client"]!).Should().StartWith("127.0.0.1:").And.NotContain("198.51.100.7");
        var request = await fixture.Logs.WaitForAsync(e => e.EventId.Id == 6002 && (string?)e["ConnectionId"] == (string?)close["ConnectionId"]);
        request["Client"].Should().Be("127.0.0.1");
        request["Scheme"].Should().Be("http");
    }
}

public class OperationsConfigurationTests
{
    [Fact]
    public void Invalid_operations_settings_are_all_reported_at_start()
    {
        var act = () => ProxyServer.Create([], config => config.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Tls:Enable"] = "false",
            ["Monitoring:Port"] = "70000",
            ["Monitoring:ReadyTimeout"] = "0",
            ["Telemetry:OtlpProtocol"] = "udp",
            ["Telemetry:OtlpEndpoint"] = "not a url",
            ["ForwardedHeaders:KnownProxies:0"] = "proxy.example",
            ["ForwardedHeaders:KnownNetworks:0"] = "10.0.0.0/99",
            ["ForwardedHeaders:ForwardLimit"] = "0",
        }));

        act.Should().Throw<InvalidOperationException>().Which.Message.Should()
            .Contain("Monitoring:Port=70000").And.Contain("Monitoring:ReadyTimeout=0").And.Contain("Telemetry:OtlpProtocol=udp")
            .And.Contain("Telemetry:OtlpEndpoint=not a url").And.Contain("'proxy.example' is not an IP address")
            .And.Contain("'10.0.0.0/99' is not a network").And.Contain("ForwardedHeaders:ForwardLimit=0");
    }

    [Fact]
    public async Task ConfigFile_is_read_and_the_command_line_overrides_it()
    {
        using var dir = global::TestSupport.TempDirectory.Create();
        var file = dir.Combine("imageio-proxy.json");
        await File.WriteAllTextAsync(file, $$"""
            {
              "Remote": { "Host": "127.0.0.1", "Port": 0 },
              "Tls": { "Enable": false },
              "Local": { "Enable": false },
              "Control": { "Socket": "{{dir.Combine("control.sock")}}" },
              "Monitoring": { "Host": "127.0.0.1", "Port": 1 },
              "Daemon": { "MaxConnections": 3 }
            }
            """);

        await using var server = ProxyServer.Create([$"--ConfigFile={file}", "--Monitoring:Port=0"]);
        await server.StartAsync();

        server.MonitoringPort.Should().BeGreaterThan(1, "the command line (0 = any port) overrides the file's 1");
        server.Local.Enable.Should().BeFalse("the file disabled the local socket");
        File.Exists(dir.Combine("control.sock")).Should().BeTrue();
        using var client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{server.MonitoringPort}") };
        using var live = await client.GetAsync("/health/live");
        live.StatusCode.Should().Be(HttpStatusCode.OK);
    }

    [Fact]
    public void A_missing_ConfigFile_is_an_error_that_names_it()
    {
        var act = () => ProxyServer.Create(["--ConfigFile=/nonexistent/imageio-proxy.json"]);

        act.Should().Throw<InvalidOperationException>().WithMessage("*/nonexistent/imageio-proxy.json*does not exist*");
    }

    [Fact]
    public async Task Without_Monitoring_Port_there_is_no_monitoring_listener()
    {
        using var dir = global::TestSupport.TempDirectory.Create();
        await using var server = ProxyServer.Create([], config => config.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Remote:Host"] = "127.0.0.1",
            ["Remote:Port"] = "0",
            ["Tls:Enable"] = "false",
            ["Local:Enable"] = "false",
            ["Control:Enable"] = "false",
        }));
        await server.StartAsync();

        server.MonitoringPort.Should().BeNull();
        server.RemotePort.Should().NotBeNull();
    }
}
