using System.Collections.Concurrent;
using System.IO.Compression;
using System.Net.Http.Json;
using System.Text;
using ImageioProxy.Hosting;
using ImageioProxy.Tests.Support;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using TestSupport;

namespace ImageioProxy.Tests.Hosting;

/// <summary>Telemetry:OtlpEndpoint set: spans and metrics leave through OTLP/HTTP, redacted. The
/// collector is an in-process stand-in that records what it receives (no collector is installable here).</summary>
public class OtlpExportTests
{
    [Fact]
    public async Task Spans_and_metrics_reach_the_configured_otlp_endpoint_without_the_ticket_id()
    {
        await using var collector = await RecordingCollector.StartAsync();
        using var dir = TempDirectory.Create("ipx-otlp");
        await QemuImg.CreateAsync(dir.Combine("disk.raw"), "raw", 4 << 20);
        await using var qemu = await QemuNbdServer.StartAsync(dir.Combine("disk.raw"));
        var ticketId = Guid.NewGuid().ToString();

        var server = ProxyServer.Create([], config => config.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Remote:Host"] = "127.0.0.1",
            ["Remote:Port"] = "0",
            ["Tls:Enable"] = "false",
            ["Local:Enable"] = "false",
            ["Control:Socket"] = dir.Combine("control.sock"),
            ["Logging:LogLevel:Default"] = "Warning",
            ["Telemetry:OtlpEndpoint"] = collector.Url,
            ["Telemetry:OtlpProtocol"] = "http/protobuf",
        }));
        await using (server)
        {
            await server.StartAsync();
            using var control = ProxyFixture.UnixClient(dir.Combine("control.sock"));
            using (var put = await control.PutAsJsonAsync($"/tickets/{ticketId}", new
            {
                uuid = ticketId, size = 4 << 20, ops = new[] { "read", "write" }, timeout = 300, url = $"nbd:unix:{qemu.SocketPath}", transfer_id = "otlp-test",
            }))
            {
                put.EnsureSuccessStatusCode();
            }
            using var data = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{server.RemotePort}") };
            using var flush = await data.PatchAsync($"/images/{ticketId}", new StringContent("""{"op":"zero","offset":0,"size":1048576,"flush":true}"""));
            flush.EnsureSuccessStatusCode();
            // Stopping flushes the exporters.
            await server.StopAsync();
        }

        var traces = collector.Received("/v1/traces");
        var metrics = collector.Received("/v1/metrics");
        traces.Should().Contain("nbd.flush").And.Contain("nbd.write_zeroes").And.Contain("/images/{ticket_id}").And.Contain("imageio-proxy");
        metrics.Should().Contain("imageio.proxy.io").And.Contain("imageio.proxy.flush.duration").And.Contain("nbd.client.request.duration")
            .And.Contain("http.server.request.duration");
        (traces + metrics).Should().NotContain(ticketId);
    }

    /// <summary>Accepts OTLP/HTTP exports and keeps their (decompressed) bodies, read as Latin-1 so that
    /// the protobuf's embedded strings can be searched.</summary>
    private sealed class RecordingCollector : IAsyncDisposable
    {
        private readonly WebApplication _app;
        private readonly ConcurrentQueue<(string Path, byte[] Body)> _requests = new();

        private RecordingCollector(WebApplication app) => _app = app;

        public string Url { get; private set; } = "";

        public static async Task<RecordingCollector> StartAsync()
        {
            var builder = WebApplication.CreateSlimBuilder();
            builder.WebHost.UseUrls("http://127.0.0.1:0");
            var app = builder.Build();
            var collector = new RecordingCollector(app);
            app.Run(async http =>
            {
                Stream body = http.Request.Body;
                if (http.Request.Headers.ContentEncoding == "gzip")
                {
                    body = new GZipStream(body, CompressionMode.Decompress);
                }
                using var copy = new MemoryStream();
                await body.CopyToAsync(copy, http.RequestAborted);
                collector._requests.Enqueue((http.Request.Path.Value ?? "", copy.ToArray()));
                http.Response.ContentType = "application/x-protobuf";
                http.Response.StatusCode = StatusCodes.Status200OK;
            });
            await app.StartAsync();
            collector.Url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            return collector;
        }

        public string Received(string path)
            => string.Concat(_requests.Where(r => r.Path == path).Select(r => Encoding.Latin1.GetString(r.Body)));

        public async ValueTask DisposeAsync() => await _app.DisposeAsync();
    }
}
