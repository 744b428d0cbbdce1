using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text.RegularExpressions;
using ImageioProxy.Tests.Support;

namespace ImageioProxy.Tests.Observability;

/// <summary>Metrics on the monitoring listener, spans and logs, after real traffic through curl to
/// qemu-nbd. The ticket id, a bearer secret, must appear in none of them.</summary>
public partial class TelemetryTests(MonitoredProxyFixture fixture) : IClassFixture<MonitoredProxyFixture>
{
    private const int MiB = 1024 * 1024;

    [Fact]
    public async Task Metrics_report_bytes_operations_flushes_tickets_pools_and_the_builtin_http_and_nbd_instruments()
    {
        var id = await fixture.AddTicketAsync();
        var source = fixture.CreateSourceFile(4 * MiB, seed: 11);
        (await fixture.CurlAsync("-X", "PUT", "--upload-file", source, fixture.ImageUrl(id) + "?flush=y")).Status.Should().Be(200);
        (await fixture.CurlAsync("-X", "PATCH", "--data", """{"op":"zero","offset":0,"size":1048576}""", fixture.ImageUrl(id))).Status.Should().Be(200);
        (await fixture.CurlAsync("-H", "Range: bytes=0-2097151", fixture.ImageUrl(id))).Status.Should().Be(206);

        using var monitoring = fixture.Monitoring;
        using var response = await monitoring.GetAsync("/metrics");
        var text = await response.Content.ReadAsStringAsync();

        response.StatusCode.Should().Be(HttpStatusCode.OK);
        response.Content.Headers.ContentType!.MediaType.Should().Be("text/plain");
        // Other test classes run proxies in this process too: values are at least ours.
        Value(text, "imageio_proxy_io_bytes_total", "imageio_operation=\"write\"").Should().BeGreaterThanOrEqualTo(4 * MiB);
        Value(text, "imageio_proxy_io_bytes_total", "imageio_operation=\"zero\"").Should().BeGreaterThanOrEqualTo(MiB);
        Value(text, "imageio_proxy_io_bytes_total", "imageio_operation=\"read\"").Should().BeGreaterThanOrEqualTo(2 * MiB);
        Value(text, "imageio_proxy_flush_duration_seconds_count", "").Should().BeGreaterThanOrEqualTo(1);
        Value(text, "imageio_proxy_operation_duration_seconds_count", "imageio_operation=\"write\"").Should().BeGreaterThanOrEqualTo(1);
        Value(text, "imageio_proxy_tickets", "state=\"idle\"").Should().BeGreaterThanOrEqualTo(1);
        Value(text, "imageio_proxy_nbd_pool_connections", "state=\"idle\"").Should().BeGreaterThanOrEqualTo(1);
        Value(text, "nbd_client_request_duration_seconds_count", "nbd_command=\"write\"").Should().BeGreaterThanOrEqualTo(1);
        Value(text, "nbd_client_request_duration_seconds_count", "nbd_command=\"flush\"").Should().BeGreaterThanOrEqualTo(1);
        text.Should().Contain("nbd_client_requests_in_flight{");
        text.Should().Contain("kestrel_active_connections{");
        Value(text, "http_server_request_duration_seconds_count", "http_request_method=\"PUT\"").Should().BeGreaterThanOrEqualTo(1);
        // Long transfers must not all land in +Inf: the buckets reach an hour, not the default 10 s.
        text.Should().MatchRegex("http_server_request_duration_seconds_bucket\\{[^}]*le=\"3600\"");
        text.Should().MatchRegex("imageio_proxy_flush_duration_seconds_bucket\\{[^}]*le=\"600\"");
    }

    [Fact]
    public async Task Health_endpoints_answer_on_the_monitoring_listener_only()
    {
        using var monitoring = fixture.Monitoring;

        using var live = await monitoring.GetAsync("/health/live");
        using var ready = await monitoring.GetAsync("/health/ready");
        using var unknown = await monitoring.GetAsync("/images/x");

        live.StatusCode.Should().Be(HttpStatusCode.OK);
        (await live.Content.ReadAsStringAsync()).Should().Be("Healthy");
        ready.StatusCode.Should().Be(HttpStatusCode.OK);
        (await ready.Content.ReadAsStringAsync()).Should().Be("Healthy");
        unknown.StatusCode.Should().Be(HttpStatusCode.NotFound);

        // The data port serves none of it.
        foreach (var path in new[] { "/metrics", "/health/live", "/health/ready" })
        {
            var data = await fixture.CurlAsync(fixture.RemoteUri + path.TrimStart('/'));
            data.Status.Should().Be(404, path);
            data.Text.Should().NotContain("Healthy").And.NotContain("# TYPE");
        }
    }

    [Fact]
    public async Task A_request_span_carries_the_redacted_route_and_parents_the_nbd_flush_and_zero_spans()
    {
        var id = await fixture.AddTicketAsync();

        var patch = await fixture.CurlAsync("-X", "PATCH", "-H", "User-Agent: span-test-zero",
            "--data", """{"op":"zero","offset":1048576,"size":1048576,"flush":true}""", fixture.ImageUrl(id));
        patch.Status.Should().Be(200);

        var request = await WaitForSpanAsync(a => a.Source.Name == "Microsoft.AspNetCore" && (string?)a.GetTagItem("user_agent.original") == "span-test-zero");
        request.GetTagItem("url.path").Should().Be("/images/{ticket_id}");
        request.GetTagItem("http.response.status_code").Should().Be(200);
        var children = fixture.Spans.Snapshot().Where(a => a.ParentSpanId == request.SpanId && a.TraceId == request.TraceId).Select(a => a.DisplayName).ToList();
        children.Should().Contain("nbd.write_zeroes").And.Contain("nbd.flush");
    }

    [Fact]
    public async Task No_ticket_id_in_metrics_spans_or_logs_after_every_kind_of_request()
    {
        var id = await fixture.AddTicketAsync();
        var url = fixture.ImageUrl(id);
        var source = fixture.CreateSourceFile(2 * MiB, seed: 12);
        (await fixture.CurlAsync("-X", "OPTIONS", url)).Status.Should().Be(200);
        (await fixture.CurlAsync("-X", "PUT", "--upload-file", source, url + "?flush=n")).Status.Should().Be(200);
        (await fixture.CurlAsync("-X", "PATCH", "--data", """{"op":"flush"}""", url)).Status.Should().Be(200);
        (await fixture.CurlAsync(url + "/extents")).Status.Should().Be(200);
        (await fixture.CurlAsync(url + "/checksum")).Status.Should().Be(200);
        (await fixture.CurlAsync("-H", "Range: bytes=0-1023", url)).Status.Should().Be(206);
        (await fixture.CurlAsync("-X", "PUT", "-H", "Content-Range: bytes nonsense", "--data", "x", url)).Status.Should().Be(400);
        (await fixture.CurlAsync("-X", "DELETE", url)).Status.Should().Be(405);
        (await fixture.CurlAsync(url + "/nonsense")).Status.Should().Be(404);
        using (var status = await fixture.Control.GetAsync($"/tickets/{id}"))
        {
            status.StatusCode.Should().Be(HttpStatusCode.OK);
        }
        await fixture.RemoveTicketAsync(id);
        (await fixture.CurlAsync("-X", "PUT", "--data", "x", url)).Status.Should().Be(403);
        using var monitoring = fixture.Monitoring;
        var metrics = await monitoring.GetStringAsync("/metrics");
        await fixture.Logs.WaitForAsync(e => e.EventId.Id == 6002 && e.Message.StartsWith("PUT ", StringComparison.Ordinal) && e.Message.Contains("-> 403", StringComparison.Ordinal));

        metrics.Should().NotContain(id);
        var spans = fixture.Spans.Snapshot();
        spans.Should().Contain(a => (string?)a.GetTagItem("url.path") == "/images/{ticket_id}/checksum", "the requests were traced, with the id redacted");
        spans.Should().Contain(a => (string?)a.GetTagItem("url.path") == "/tickets/{ticket_id}");
        foreach (var span in spans)
        {
            span.DisplayName.Should().NotContain(id);
            foreach (var tag in span.TagObjects)
            {
                (tag.Value?.ToString() ?? "").Should().NotContain(id, $"span {span.DisplayName} tag {tag.Key}");
            }
        }
        var logs = fixture.Logs.Entries;
        logs.Should().Contain(e => e.EventId.Id == 6002 && e.Message.Contains("/images/{ticket_id}/extents", StringComparison.Ordinal), "requests were logged, redacted");
        foreach (var entry in logs)
        {
            entry.AllText.Should().NotContain(id, $"log event {entry.EventId} of {entry.Category}");
        }
    }

    [Fact]
    public async Task Closing_a_connection_logs_one_close_line_with_its_operation_counts_and_bytes()
    {
        var transfer = $"close-{Guid.NewGuid():N}";
        var id = await fixture.AddTicketAsync(changes: t => t["transfer_id"] = transfer);
        var source = fixture.CreateSourceFile(3 * MiB, seed: 13);
        var url = fixture.ImageUrl(id);

        // One curl, one connection: two PUTs, a PATCH zero, a PATCH flush and a GET.
        var result = await fixture.CurlAsync(
            "-X", "PUT", "-H", "Content-Range: bytes 0-*/*", "--upload-file", source, url + "?flush=n", "--next",
            "-sS", "-o", "/dev/null", "-X", "PUT", "-H", $"Content-Range: bytes {3 * MiB}-*/*", "--upload-file", source, url + "?flush=n", "--next",
            "-sS", "-o", "/dev/null", "-X", "PATCH", "--data", """{"op":"zero","offset":8388608,"size":2097152}""", url, "--next",
            "-sS", "-o", "/dev/null", "-X", "PATCH", "--data", """{"op":"flush"}""", url, "--next",
            "-sS", "-o", "/dev/null", "-H", "Range: bytes=0-1048575", url);
        result.Stderr.Should().BeEmpty();

        var close = await fixture.Logs.WaitForAsync(e => e.EventId.Id == 6001 && (string?)e["TransferId"] == transfer);

        close.Level.Should().Be(Microsoft.Extensions.Logging.LogLevel.Information);
        close["Requests"].Should().Be(5);
        close["WriteOps"].Should().Be(2L);
        close["WriteBytes"].Should().Be(6L * MiB);
        close["ZeroOps"].Should().Be(1L);
        close["ZeroBytes"].Should().Be(2L * MiB);
        close["FlushOps"].Should().Be(1L);
        close["ReadOps"].Should().Be(1L);
        close["ReadBytes"].Should().Be((long)MiB);
        ((double)close["ThroughputMiBps"]!).Should().BeGreaterThan(0);
        close.Message.Should().StartWith("CLOSE connection=").And.Contain($"transfer={transfer}").And.Contain("write=2 ops 6291456 bytes");
    }

    [Fact]
    public async Task A_trusted_proxy_forwarded_client_address_shows_in_the_close_line()
    {
        var transfer = $"fwd-{Guid.NewGuid():N}";
        var id = await fixture.AddTicketAsync(changes: t => t["transfer_id"] = transfer);

        // 127.0.0.1 is a configured proxy (ForwardedHeaders:KnownProxies) in this fixture.
        (await fixture.CurlAsync("-X", "OPTIONS", "-H", "User-Agent: forwarded-test", "-H", "X-Forwarded-For: 198.51.100.7", "-H", "X-Forwarded-Proto: https", fixture.ImageUrl(id)))
            .Status.Should().Be(200);

        var close = await fixture.Logs.WaitForAsync(e => e.EventId.Id == 6001 && (string?)e["TransferId"] == transfer);
        ((string)close["Client"]!).Should().StartWith("198.51.100.7 via 127.0.0.1:");
        var request = await fixture.Logs.WaitForAsync(e => e.EventId.Id == 6002 && (string?)e["ConnectionId"] == (string?)close["ConnectionId"]);
        request["Client"].Should().Be("198.51.100.7");
        request["Scheme"].Should().Be("https");
    }

    private async Task<Activity> WaitForSpanAsync(Func<Activity, bool> match)
    {
        for (var i = 0; i < 500; i++)
        {
            if (fixture.Spans.Snapshot().FirstOrDefault(match) is { } found)
            {
                return found;
            }
            await Task.Delay(20);
        }
        throw new TimeoutException("no matching span within 10 s; got: " + string.Join(", ", fixture.Spans.Snapshot().Select(a => a.DisplayName)));
    }

    /// <summary>The value of the first sample of <paramref name="name"/> whose labels contain <paramref name="label"/>.</summary>
    internal static double Value(string exposition, string name, string label)
    {
        foreach (Match match in SampleLine().Matches(exposition))
        {
            if (match.Groups["name"].Value == name && match.Groups["labels"].Value.Contains(label, StringComparison.Ordinal))
            {
                return double.Parse(match.Groups["value"].Value, CultureInfo.InvariantCulture);
            }
        }
        throw new InvalidOperationException($"no sample {name}{{…{label}…}} in:\n{exposition}");
    }

    [GeneratedRegex(@"^(?<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?<labels>[^}]*)\})? (?<value>\S+)", RegexOptions.Multiline)]
    private static partial Regex SampleLine();
}
