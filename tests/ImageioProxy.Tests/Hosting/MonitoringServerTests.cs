using System.Net;
using System.Text.Json;
using ImageioProxy.Hosting;
using Microsoft.Extensions.Configuration;
using TestSupport;

namespace ImageioProxy.Tests.Hosting;

/// <summary>/health/ready with a startup ticket (the container set-up): not ready until the ticket's
/// qemu-nbd answers an NBD handshake; /health/live does not care.</summary>
public class MonitoringServerTests
{
    [Fact]
    public async Task Readiness_waits_for_the_startup_tickets_backend_and_liveness_does_not()
    {
        using var dir = TempDirectory.Create("ipx-rdy");
        await QemuImg.CreateAsync(dir.Combine("disk.raw"), "raw", 1 << 20);
        var socket = dir.Combine("sidecar.sock");   // where the sidecar will appear
        var ticketFile = dir.Combine("ticket.json");
        await File.WriteAllTextAsync(ticketFile, JsonSerializer.Serialize(new
        {
            uuid = Guid.NewGuid().ToString(), size = 1 << 20, ops = new[] { "read" }, timeout = 300, url = $"nbd:unix:{socket}", transfer_id = "ready-test",
        }));
        await using var server = ProxyServer.Create([], config => config.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Remote:Host"] = "127.0.0.1",
            ["Remote:Port"] = "0",
            ["Tls:Enable"] = "false",
            ["Local:Enable"] = "false",
            ["Control:Enable"] = "false",
            ["Daemon:TicketFile"] = ticketFile,
            ["Monitoring:Host"] = "127.0.0.1",
            ["Monitoring:Port"] = "0",
            ["Monitoring:ReadyTimeout"] = "2",
            ["Logging:LogLevel:Default"] = "Warning",
        }));
        await server.StartAsync();
        using var client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{server.MonitoringPort}"), Timeout = TimeSpan.FromSeconds(30) };

        using (var notReady = await client.GetAsync("/health/ready"))
        using (var live = await client.GetAsync("/health/live"))
        {
            notReady.StatusCode.Should().Be(HttpStatusCode.ServiceUnavailable);
            (await notReady.Content.ReadAsStringAsync()).Should().Be("Unhealthy");
            live.StatusCode.Should().Be(HttpStatusCode.OK);
        }

        // The sidecar comes up: qemu-nbd's socket appears at the ticket's path.
        await using var qemu = await QemuNbdServer.StartAsync(dir.Combine("disk.raw"));
        File.CreateSymbolicLink(socket, qemu.SocketPath);

        using var ready = await client.GetAsync("/health/ready");
        ready.StatusCode.Should().Be(HttpStatusCode.OK);
        (await ready.Content.ReadAsStringAsync()).Should().Be("Healthy");

        // The data port still serves only the data API.
        using var data = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{server.RemotePort}") };
        using var notHere = await data.GetAsync("/health/ready");
        notHere.StatusCode.Should().Be(HttpStatusCode.NotFound);
    }
}
