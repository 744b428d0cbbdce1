using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using ImageioProxy.Tests.Support;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace ImageioProxy.Tests.Security;

/// <summary>The small image, a high per-ticket connection limit (the fuzzer's parallel connections are
/// not what is tested) and short header/body timeouts, with every Warning or worse log captured.</summary>
public sealed class FuzzFixture() : SmallImageFixture(new Dictionary<string, string?>
{
    ["Daemon:MaxConnections"] = "64",
    ["Limits:RequestHeadersTimeout"] = "2",
    ["Limits:MinRequestBodyDataRateGracePeriod"] = "2",
})
{
    public CapturingLoggerProvider Logs { get; } = new();

    protected override void ConfigureServices(IServiceCollection services) => services.AddSingleton<ILoggerProvider>(Logs);
}

/// <summary>Seeded, time-bounded fuzzing of the data listeners over raw sockets: valid requests mutated
/// at random (numbers swapped for edge values, bytes flipped, inserted or cut, headers duplicated or
/// added, line ends broken, bodies truncated). No answer may be a 5xx, nothing may log a failed request,
/// and afterwards the server is healthy: nothing leaked, connections back to baseline, PUT/GET work.
/// IMAGEIO_FUZZ_SEED replays a run; IMAGEIO_FUZZ_REQUESTS changes its length (requests per worker, default 100).</summary>
public class RequestFuzzTests(FuzzFixture fixture, ITestOutputHelper output) : IClassFixture<FuzzFixture>
{
    private const int Workers = 8;
    private static readonly TimeSpan ReplyWait = TimeSpan.FromSeconds(1);

    private static readonly string[] Templates =
    [
        "OPTIONS /images/{id} HTTP/1.1\r\nHost: test\r\n\r\n",
        "OPTIONS /images/* HTTP/1.1\r\nHost: test\r\n\r\n",
        "GET /images/{id} HTTP/1.1\r\nHost: test\r\nRange: bytes=100-4195\r\n\r\n",
        "GET /images/{id} HTTP/1.1\r\nHost: test\r\nRange: bytes=-512\r\n\r\n",
        "HEAD /images/{id} HTTP/1.1\r\nHost: test\r\n\r\n",
        "PUT /images/{id}?flush=n HTTP/1.1\r\nHost: test\r\nContent-Range: bytes 4096-4103/*\r\nContent-Length: 8\r\n\r\nfuzzdata",
        "PUT /images/{id}?flush=y HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Range: bytes 8192-8199/1048576\r\nContent-Length: 8\r\n\r\nFUZZDATA",
        "PUT /images/{id} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nContent-Range: bytes 12288-12295/*\r\n\r\n4\r\nfuzz\r\n4\r\ndata\r\n0\r\n\r\n",
        "PATCH /images/{id} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 54\r\n\r\n{\"op\": \"zero\", \"offset\": 16384, \"size\": 4096, \"flush\": true}",
        "PATCH /images/{id} HTTP/1.1\r\nHost: test\r\nContent-Length: 15\r\n\r\n{\"op\": \"flush\"}",
        "GET /images/{id}/extents?context=zero&start=0&length=65536 HTTP/1.1\r\nHost: test\r\n\r\n",
        "GET /images/{id}/checksum?algorithm=sha256&block_size=1048576 HTTP/1.1\r\nHost: test\r\n\r\n",
        "GET /images/{id}/checksum/algorithms HTTP/1.1\r\nHost: test\r\n\r\n",
        "GET /info/ HTTP/1.1\r\nHost: test\r\n\r\n",
        "PUT /tickets/{id} HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\n{}",
        "DELETE /tickets/ HTTP/1.1\r\nHost: test\r\n\r\n",
    ];

    private static readonly string[] EdgeNumbers =
    [
        "0", "1", "-1", "4095", "1048575", "1048576", "1048577", "2147483648", "4294967296", "9223372036854775807",
        "9223372036854775808", "18446744073709551615", "18446744073709551616", "99999999999999999999999", "1.5", "1e3", "-0", "", "abc", "0x10",
    ];

    private static readonly string[] ExtraHeaders =
    [
        "Transfer-Encoding: chunked", "Transfer-Encoding: gzip, chunked", "Content-Length: 5", "Content-Length: -1", "Content-Length: 99999999",
        "Expect: 100-continue", "Connection: close", "Range: bytes=0-", "Content-Range: bytes 0-0/*", "Content-Range: bytes */*", "Host: other",
        "Content-Type: application/json; charset=utf-32", "Origin: http://evil", "Access-Control-Request-Method: PUT", "X-Forwarded-For: 1.2.3.4",
    ];

    private static readonly string[] Methods = ["GET", "PUT", "PATCH", "OPTIONS", "HEAD", "DELETE", "POST", "TRACE", "CONNECT", "PRI", "get", "X"];

    [Fact]
    public async Task Random_and_mutated_requests_never_get_a_5xx_and_leave_the_server_healthy()
    {
        var seed = int.TryParse(Environment.GetEnvironmentVariable("IMAGEIO_FUZZ_SEED"), NumberStyles.Integer, CultureInfo.InvariantCulture, out var s) ? s : Random.Shared.Next();
        // A fixed number of requests per worker, not a time budget: the same cases on a fast or a slow machine.
        var perWorker = int.TryParse(Environment.GetEnvironmentVariable("IMAGEIO_FUZZ_REQUESTS"), NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : 100;
        output.WriteLine($"IMAGEIO_FUZZ_SEED={seed} IMAGEIO_FUZZ_REQUESTS={perWorker}");
        var writer = await fixture.AddTicketAsync(changes: t => t["inactivity_timeout"] = 300);
        var reader = await fixture.AddTicketAsync(["read"], t => t["inactivity_timeout"] = 300);
        string[] ids = [writer, reader, "no-such-ticket", "", "*", "..", "%2e%2e", writer + "/extents"];
        var failures = new ConcurrentQueue<string>();
        var counts = new ConcurrentDictionary<int, int>();
        var sent = 0;

        async Task WorkAsync(int worker)
        {
            var random = new Random(seed + worker);
            for (var i = 0; i < perWorker; i++)
            {
                var (request, note) = Mutate(random, ids);
                var server = random.Next(5) == 0 ? RawExchange.Unix(fixture.LocalSocket) : RawExchange.Tcp(fixture.RemoteUri);
                RawReply reply;
                try
                {
                    reply = await RawExchange.SendAsync(server, request, ReplyWait);
                }
                catch (Exception e) when (e is System.Net.Sockets.SocketException or OperationCanceledException or IOException)
                {
                    failures.Enqueue($"cannot talk to the server ({e.Message}) after {note}: {Show(request)}");
                    return;
                }
                Interlocked.Increment(ref sent);
                counts.AddOrUpdate(reply.Status, 1, (_, c) => c + 1);
                // 505 is the protocol's answer to an HTTP version we do not speak, Kestrel's own.
                if (reply.Status >= 500 && !(reply.Status == 505 && !HasSupportedVersion(request)))
                {
                    failures.Enqueue($"{reply} for [{note}] {Show(request)}");
                }
            }
        }

        await Task.WhenAll(Enumerable.Range(0, Workers).Select(w => Task.Run(() => WorkAsync(w))));

        output.WriteLine($"{sent} requests; statuses: {string.Join(", ", counts.OrderBy(c => c.Key).Select(c => $"{c.Key}: {c.Value}"))}");
        failures.Should().BeEmpty($"no request may get a 5xx (replay with IMAGEIO_FUZZ_SEED={seed})");
        fixture.Logs.Entries.Where(e => e.StartsWith("Error", StringComparison.Ordinal) || e.StartsWith("Critical", StringComparison.Ordinal))
            .Should().BeEmpty($"no request may fail on the server side (replay with IMAGEIO_FUZZ_SEED={seed})");
        counts.Keys.Should().Contain(k => k >= 200 && k < 300, "some mutations stay valid: the harness reaches the handlers");
        counts.Keys.Should().Contain(k => k >= 400 && k < 500);

        // Healthy afterwards: quiet tickets, nothing leaked, connections back to 0, a normal PUT/GET works.
        await fixture.AssertQuiescentAsync(writer);
        await fixture.AssertQuiescentAsync(reader);
        fixture.Server.Tickets.GlobalBudget.InUse.Should().Be(0);
        using (var status = JsonDocument.Parse(await fixture.Control.GetStringAsync($"/tickets/{writer}")))
        {
            status.RootElement.GetProperty("connections").GetInt32().Should().Be(0);
            status.RootElement.GetProperty("canceled").GetBoolean().Should().BeFalse();
        }
        var data = Encoding.ASCII.GetBytes("healthy after fuzzing");
        using var client = new HttpClient { BaseAddress = fixture.RemoteUri, Timeout = TimeSpan.FromSeconds(30) };
        using var put = new ByteArrayContent(data);
        put.Headers.ContentRange = new System.Net.Http.Headers.ContentRangeHeaderValue(65536, 65536 + data.Length - 1);
        using (var response = await client.PutAsync($"/images/{writer}", put))
        {
            ((int)response.StatusCode).Should().Be(200, $"replay with IMAGEIO_FUZZ_SEED={seed}");
        }
        using var get = new HttpRequestMessage(HttpMethod.Get, $"/images/{writer}");
        get.Headers.Range = new System.Net.Http.Headers.RangeHeaderValue(65536, 65536 + data.Length - 1);
        using var reply = await client.SendAsync(get);
        (await reply.Content.ReadAsByteArrayAsync()).Should().Equal(data);
    }

    private static bool HasSupportedVersion(string request)
    {
        // Kestrel also ends the request line at a bare LF.
        var end = request.IndexOfAny(['\r', '\n']);
        var line = end < 0 ? request : request[..end];
        return line.EndsWith(" HTTP/1.1", StringComparison.Ordinal) || line.EndsWith(" HTTP/1.0", StringComparison.Ordinal);
    }

    private static string Show(string request)
    {
        var text = request.Length <= 400 ? request : request[..400] + $"...({request.Length} chars)";
        return text.Replace("\r", "\\r", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);
    }

    /// <summary>A template with one to four mutations; returns the request and what was done.</summary>
    private static (string Request, string Note) Mutate(Random random, string[] ids)
    {
        var request = Templates[random.Next(Templates.Length)].Replace("{id}", ids[random.Next(ids.Length)], StringComparison.Ordinal);
        var notes = new List<string>();
        for (var i = random.Next(1, 5); i > 0 && request.Length > 0; i--)
        {
            switch (random.Next(11))
            {
                case 0: // a number becomes an edge value
                {
                    var numbers = System.Text.RegularExpressions.Regex.Matches(request, "[0-9]+");
                    if (numbers.Count > 0)
                    {
                        var match = numbers[random.Next(numbers.Count)];
                        var value = EdgeNumbers[random.Next(EdgeNumbers.Length)];
                        request = request[..match.Index] + value + request[(match.Index + match.Length)..];
                        notes.Add($"number->{value}");
                    }
                    break;
                }
                case 1: // flip a byte
                {
                    var at = random.Next(request.Length);
                    request = request[..at] + (char)random.Next(256) + request[(at + 1)..];
                    notes.Add($"flip@{at}");
                    break;
                }
                case 2: // insert random bytes
                {
                    var at = random.Next(request.Length + 1);
                    var bytes = new char[random.Next(1, 16)];
                    for (var b = 0; b < bytes.Length; b++)
                    {
                        bytes[b] = (char)random.Next(256);
                    }
                    request = request[..at] + new string(bytes) + request[at..];
                    notes.Add($"insert@{at}");
                    break;
                }
                case 3: // cut a span
                {
                    var at = random.Next(request.Length);
                    var length = random.Next(1, Math.Min(32, request.Length - at) + 1);
                    request = request.Remove(at, length);
                    notes.Add($"cut@{at}+{length}");
                    break;
                }
                case 4: // truncate: the client stops sending
                {
                    var at = random.Next(request.Length);
                    request = request[..at];
                    notes.Add($"truncate@{at}");
                    break;
                }
                case 5: // add a header
                {
                    var header = ExtraHeaders[random.Next(ExtraHeaders.Length)];
                    var line = request.IndexOf("\r\n", StringComparison.Ordinal);
                    if (line > 0)
                    {
                        request = request[..(line + 2)] + header + "\r\n" + request[(line + 2)..];
                        notes.Add($"header {header}");
                    }
                    break;
                }
                case 6: // duplicate a header line
                {
                    var lines = request.Split("\r\n").ToList();
                    if (lines.Count > 2)
                    {
                        var index = random.Next(1, lines.Count - 1);
                        lines.Insert(index, lines[index]);
                        request = string.Join("\r\n", lines);
                        notes.Add($"duplicate line {index}");
                    }
                    break;
                }
                case 7: // bare line feeds
                    request = request.Replace("\r\n", "\n", StringComparison.Ordinal);
                    notes.Add("bare LF");
                    break;
                case 8: // another method
                {
                    var space = request.IndexOf(' ', StringComparison.Ordinal);
                    if (space > 0)
                    {
                        var method = Methods[random.Next(Methods.Length)];
                        request = method + request[space..];
                        notes.Add($"method {method}");
                    }
                    break;
                }
                case 9: // something huge
                {
                    var at = random.Next(request.Length + 1);
                    var size = random.Next(2) == 0 ? 5000 : 40000;
                    request = request[..at] + new string((char)random.Next(32, 127), size) + request[at..];
                    notes.Add($"huge {size}@{at}");
                    break;
                }
                default: // another HTTP version
                {
                    string[] versions = ["HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/1.1.1", "http/1.1", ""];
                    var version = versions[random.Next(versions.Length)];
                    request = request.Replace(" HTTP/1.1\r\n", version.Length > 0 ? $" {version}\r\n" : "\r\n", StringComparison.Ordinal);
                    notes.Add($"version {version}");
                    break;
                }
            }
        }
        return (request, string.Join(", ", notes));
    }
}
