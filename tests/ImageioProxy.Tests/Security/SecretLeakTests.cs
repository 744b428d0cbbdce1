using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Net.Sockets;
using System.Text;
using ImageioProxy.Tests.Support;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace ImageioProxy.Tests.Security;

/// <summary>Everything both hosts log, at Trace, as text: message, every state value, scopes and exceptions.</summary>
public sealed class CapturingLoggerProvider : ILoggerProvider, ISupportExternalScope
{
    private IExternalScopeProvider _scopes = new LoggerExternalScopeProvider();

    public ConcurrentQueue<string> Entries { get; } = new();

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void SetScopeProvider(IExternalScopeProvider scopeProvider) => _scopes = scopeProvider;

    public void Dispose()
    {
    }

    private sealed class Logger(CapturingLoggerProvider provider, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => provider._scopes.Push(state);

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            var text = new StringBuilder($"{logLevel} {category} [{eventId}] {formatter(state, exception)}");
            if (state is IEnumerable<KeyValuePair<string, object?>> values)
            {
                foreach (var (key, value) in values)
                {
                    text.Append(" | ").Append(key).Append('=').Append(value);
                }
            }
            provider._scopes.ForEachScope((scope, builder) => builder.Append(" | scope ").Append(scope), text);
            if (exception is not null)
            {
                text.Append(" | ").Append(exception);
            }
            provider.Entries.Enqueue(text.ToString());
        }
    }
}

/// <summary>Logs with every category at Trace, as an operator debugging the service would set them.</summary>
public sealed class LogCaptureFixture() : ProxyFixture("raw", 4L * 1024 * 1024, new Dictionary<string, string?>
{
    ["Logging:LogLevel:Default"] = "Trace",
    ["Logging:LogLevel:Microsoft"] = "Trace",
    ["Logging:LogLevel:Microsoft.AspNetCore"] = "Trace",
    ["Logging:LogLevel:Microsoft.AspNetCore.Hosting.Diagnostics"] = "Trace",
    ["Logging:LogLevel:Microsoft.AspNetCore.Server.Kestrel"] = "Trace",
    ["Logging:LogLevel:Microsoft.AspNetCore.Server.Kestrel.BadRequests"] = "Trace",
    ["Logging:LogLevel:Microsoft.AspNetCore.Server.Kestrel.Connections"] = "Trace",
    ["Logging:LogLevel:NbdClient"] = "Trace",
    ["Daemon:InactivityTimeout"] = "2",
})
{
    public CapturingLoggerProvider Logs { get; } = new();

    protected override void ConfigureServices(IServiceCollection services) => services.AddSingleton<ILoggerProvider>(Logs);
}

/// <summary>Ticket ids are bearer secrets (imageio issue #26, ecosystem.md §5.4 item 8): they must not
/// appear in any log line (ASP.NET Core's and Kestrel's included), metric tag or trace. The test drives
/// every kind of request and failure with its tickets while capturing all three, then scans it all.</summary>
public class SecretLeakTests(LogCaptureFixture fixture) : IClassFixture<LogCaptureFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task Ticket_ids_never_appear_in_logs_metrics_or_traces()
    {
        var telemetry = new ConcurrentQueue<string>();
        using var meters = new MeterListener
        {
            InstrumentPublished = (instrument, listener) => listener.EnableMeasurementEvents(instrument),
        };
        void Record<T>(Instrument instrument, T value, ReadOnlySpan<KeyValuePair<string, object?>> tags, object? state)
        {
            var text = new StringBuilder($"metric {instrument.Meter.Name} {instrument.Name}");
            foreach (var tag in tags)
            {
                text.Append(" | ").Append(tag.Key).Append('=').Append(tag.Value);
            }
            telemetry.Enqueue(text.ToString());
        }
        meters.SetMeasurementEventCallback<long>(Record);
        meters.SetMeasurementEventCallback<int>(Record);
        meters.SetMeasurementEventCallback<double>(Record);
        meters.Start();
        void Trace(string when, Activity activity)
        {
            var text = new StringBuilder($"trace {when} {activity.Source.Name} {activity.OperationName} {activity.DisplayName} {activity.StatusDescription}");
            foreach (var tag in activity.TagObjects)
            {
                text.Append(" | ").Append(tag.Key).Append('=').Append(tag.Value);
            }
            foreach (var item in activity.Baggage)
            {
                text.Append(" | baggage ").Append(item.Key).Append('=').Append(item.Value);
            }
            foreach (var e in activity.Events)
            {
                text.Append(" | event ").Append(e.Name);
                foreach (var tag in e.Tags)
                {
                    text.Append(' ').Append(tag.Key).Append('=').Append(tag.Value);
                }
            }
            telemetry.Enqueue(text.ToString());
        }
        using var activities = new ActivityListener
        {
            ShouldListenTo = _ => true,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStarted = a => Trace("start", a),
            ActivityStopped = a => Trace("stop", a),
        };
        ActivitySource.AddActivityListener(activities);

        var secrets = await DriveEverythingAsync();

        // The capture works: each source recorded something, and a secret logged on purpose is found.
        var canary = $"canary-{Guid.NewGuid()}";
        fixture.Server.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Canary").LogTrace("Planted {Secret}", canary);
        var logs = fixture.Logs.Entries.ToArray();
        var captured = telemetry.ToArray();
        logs.Should().Contain(l => l.Contains(canary, StringComparison.Ordinal), "the scan would find a leaked id");
        logs.Should().Contain(l => l.Contains("Added transfer secret-test-", StringComparison.Ordinal), "the proxy's own logs are captured");
        logs.Should().Contain(l => l.Contains("Microsoft.AspNetCore.Server.Kestrel", StringComparison.Ordinal), "Kestrel's logs are captured");
        captured.Should().Contain(t => t.StartsWith("metric NbdClient", StringComparison.Ordinal), "NBD metrics are captured");
        captured.Should().Contain(t => t.StartsWith("metric Microsoft.AspNetCore", StringComparison.Ordinal), "ASP.NET Core metrics are captured");
        captured.Should().Contain(t => t.StartsWith("trace stop Microsoft.AspNetCore", StringComparison.Ordinal), "request traces are captured");

        // The test's own HttpClient (the engine's side: control requests carry ids in their URLs) reports
        // through System.Net.*; the proxy makes no outgoing HTTP requests, so those are not the server's.
        captured = [.. captured.Where(t => !t.Contains(" System.Net.", StringComparison.Ordinal))];
        foreach (var secret in secrets)
        {
            logs.Where(l => l.Contains(secret, StringComparison.Ordinal)).Should().BeEmpty($"ticket id {secret} must not be logged");
            captured.Where(t => t.Contains(secret, StringComparison.Ordinal)).Should().BeEmpty($"ticket id {secret} must not be in metrics or traces");
        }
    }

    /// <summary>Runs every request kind and failure with ticket ids; returns the ids used.</summary>
    private async Task<List<string>> DriveEverythingAsync()
    {
        var secrets = new List<string>();
        var remote = RawExchange.Tcp(fixture.RemoteUri);
        async Task<RawReply> SendAsync(string request) => await RawExchange.SendAsync(remote, request, Bound);

        // A full session: OPTIONS, PUT, PATCH zero and flush, GET, extents, checksum, over TCP and the local socket.
        var id = await fixture.AddTicketAsync(changes: t => t["transfer_id"] = $"secret-test-{Guid.NewGuid():N}");
        secrets.Add(id);
        (await SendAsync($"OPTIONS /images/{id} HTTP/1.1\r\nHost: t\r\n\r\n")).Status.Should().Be(200);
        (await SendAsync($"PUT /images/{id}?flush=y HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")).Status.Should().Be(200);
        (await SendAsync($"PUT /images/{id} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")).Status.Should().Be(200);
        const string Zero = "{\"op\":\"zero\",\"size\":4096,\"offset\":8192}";
        (await SendAsync($"PATCH /images/{id} HTTP/1.1\r\nHost: t\r\nContent-Length: {Zero.Length}\r\n\r\n{Zero}")).Status.Should().Be(200);
        (await SendAsync($"PATCH /images/{id} HTTP/1.1\r\nHost: t\r\nContent-Length: 14\r\n\r\n{{\"op\":\"flush\"}}")).Status.Should().Be(200);
        (await SendAsync($"GET /images/{id} HTTP/1.1\r\nHost: t\r\nRange: bytes=0-4\r\n\r\n")).Status.Should().Be(206);
        (await SendAsync($"GET /images/{id}/extents HTTP/1.1\r\nHost: t\r\n\r\n")).Status.Should().Be(200);
        (await SendAsync($"GET /images/{id}/checksum HTTP/1.1\r\nHost: t\r\n\r\n")).Status.Should().Be(200);
        (await RawExchange.SendAsync(RawExchange.Unix(fixture.LocalSocket), $"GET /images/{id}/extents HTTP/1.1\r\nHost: t\r\n\r\n", Bound)).Status.Should().Be(200);
        using (var status = await fixture.Control.GetAsync($"/tickets/{id}"))
        {
            status.EnsureSuccessStatusCode();
        }
        using (var extend = await fixture.Control.PatchAsync($"/tickets/{id}", new StringContent("{\"timeout\": 600}")))
        {
            extend.EnsureSuccessStatusCode();
        }

        // Client errors that echo or carry the id: bad values, bad framing, Kestrel's own rejections.
        (await SendAsync($"PUT /images/{id} HTTP/1.1\r\nHost: t\r\nContent-Range: bytes x\r\nContent-Length: 1\r\n\r\nx")).Status.Should().Be(400);
        (await SendAsync($"PUT /images/{id} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")).Status.Should().Be(400);
        (await SendAsync($"PATCH /images/{id} HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n{{no}}")).Status.Should().Be(400);
        (await SendAsync($"GET /images/{id}/extent HTTP/1.1\r\nHost: t\r\n\r\n")).Status.Should().Be(404);
        (await SendAsync($"DELETE /images/{id} HTTP/1.1\r\nHost: t\r\n\r\n")).Status.Should().Be(405);
        (await SendAsync($"GET /tickets/{id} HTTP/1.1\r\nHost: t\r\n\r\n")).Status.Should().Be(404);
        (await SendAsync($"GET /images/{id}?{new string('x', 9000)} HTTP/1.1\r\nHost: t\r\n\r\n")).Status.Should().Be(414);
        (await SendAsync($"GET /images/{id} HTTP/1.1\r\nHost: t\r\nX-Bad: a\0b\r\n\r\n")).Status.Should().Be(400);
        (await SendAsync($"GET /images/{id} HTTP/1.1\r\n\r\n")).Status.Should().Be(400);
        (await SendAsync($"GET /images/{id}%00 HTTP/1.1\r\nHost: t\r\n\r\n")).Status.Should().Be(400);
        (await SendAsync($"GET /images/{id} HTTP/9.9\r\nHost: t\r\n\r\n")).Status.Should().BeGreaterThanOrEqualTo(400);

        // A client that disconnects mid-PUT, and one that idles until the inactivity timeout.
        using (var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            await socket.ConnectAsync(remote);
            await socket.SendAsync(Encoding.ASCII.GetBytes($"PUT /images/{id} HTTP/1.1\r\nHost: t\r\nContent-Length: 3000000\r\n\r\n"));
            await socket.SendAsync(new byte[1024 * 1024]);
            socket.LingerState = new LingerOption(true, 0);
        }
        var idle = await fixture.AddTicketAsync(changes: t => { t["inactivity_timeout"] = 2; t.Remove("transfer_id"); });
        secrets.Add(idle);
        using (var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            await socket.ConnectAsync(remote);
            await socket.SendAsync(Encoding.ASCII.GetBytes($"OPTIONS /images/{idle} HTTP/1.1\r\nHost: t\r\n\r\n"));
            using var deadline = new CancellationTokenSource(Bound);
            (await RawExchange.ReadReplyAsync(socket, deadline.Token)).Status.Should().Be(200);
            (await RawExchange.ReadReplyAsync(socket, deadline.Token)).Closed.Should().BeTrue("closed after inactivity_timeout");
        }

        // Authorization failures: unknown, expired, read-only, canceled while running, removed.
        var unknown = Guid.NewGuid().ToString();
        secrets.Add(unknown);
        (await SendAsync($"GET /images/{unknown} HTTP/1.1\r\nHost: t\r\n\r\n")).Status.Should().Be(403);
        var expired = await fixture.AddTicketAsync(changes: t => t["timeout"] = 0);
        secrets.Add(expired);
        (await SendAsync($"GET /images/{expired}/checksum HTTP/1.1\r\nHost: t\r\n\r\n")).Status.Should().Be(403);
        var reader = await fixture.AddTicketAsync(["read"]);
        secrets.Add(reader);
        (await SendAsync($"PUT /images/{reader} HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")).Status.Should().Be(403);
        await fixture.RemoveTicketAsync(reader);
        (await SendAsync($"OPTIONS /images/{reader} HTTP/1.1\r\nHost: t\r\n\r\n")).Status.Should().Be(403);

        // A backend that cannot be opened (503 naming the cause, with an exception logged), then the ticket removed.
        var broken = await fixture.AddTicketAsync(changes: t => t["url"] = $"nbd:unix:{fixture.Directory}/missing.sock");
        secrets.Add(broken);
        (await SendAsync($"OPTIONS /images/{broken} HTTP/1.1\r\nHost: t\r\n\r\n")).Status.Should().Be(503);

        // Control API failures: invalid ticket under an id, missing ticket, conflicting replace.
        var invalid = Guid.NewGuid().ToString();
        secrets.Add(invalid);
        using (var put = await fixture.Control.PutAsync($"/tickets/{invalid}", new StringContent($"{{\"uuid\": \"{invalid}\", \"size\": \"x\"}}")))
        {
            ((int)put.StatusCode).Should().Be(400);
        }
        using (var get = await fixture.Control.GetAsync($"/tickets/{invalid}"))
        {
            ((int)get.StatusCode).Should().Be(404);
        }
        using (var patch = await fixture.Control.PatchAsync($"/tickets/{invalid}", new StringContent("{\"timeout\": 1}")))
        {
            ((int)patch.StatusCode).Should().Be(404);
        }
        await fixture.AddTicketAsync(changes: t => { t["uuid"] = id; t["transfer_id"] = "replacement"; });
        await fixture.RemoveTicketAsync(id);
        using (var clear = await fixture.Control.DeleteAsync("/tickets/"))
        {
            clear.EnsureSuccessStatusCode();
        }
        return secrets;
    }
}
