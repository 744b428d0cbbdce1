using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using ImageioProxy.Tests.Support;
using TestSupport;

namespace ImageioProxy.Tests.EndToEnd;

/// <summary>The flush barrier, proven from the backend's side: nbdkit's log filter records every NBD request
/// and reply per connection while thousands of random writes and zeroes race with flushes over many HTTP
/// connections. The checker asserts that every write whose 200 arrived before a flush was sent was
/// acknowledged by the NBD server before an NBD_CMD_FLUSH that answered before the flush's 200 — on the
/// same connection, or on any connection when the export has multi-conn.</summary>
public class FlushBarrierProofTests(ProxyFixture fixture) : IClassFixture<ProxyFixture>
{
    private const long Size = 64L << 20;

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task EveryWriteAnsweredBeforeAFlush_IsCoveredByAnNbdFlush(bool multiConn)
    {
        // On tmpfs: NBD flushes are cheap there, so thousands of requests fit in seconds.
        var image = Path.Combine("/dev/shm", $"flush-proof-{Guid.NewGuid():N}.raw");
        using var cleanup = new DeleteOnDispose(image);
        await QemuImg.CreateAsync(image, "raw", Size);
        // The delay filter inside the log makes writes slow enough that flushes really overtake them on the HTTP side.
        // With multi-conn the file plugin advertises it itself. Without, the multi-conn filter goes first (nbdkit 1.32
        // asserts otherwise) with multi-conn-track-dirty=off: by default it elides flushes it believes unneeded, and
        // the log behind it would then miss flushes the proxy sent (nbd-fault-injection.md §5).
        string[] multiConnArgs = multiConn ? [] : ["multi-conn-mode=disable", "multi-conn-track-dirty=off"];
        string[] filters = multiConn ? ["log", "delay"] : ["multi-conn", "log", "delay"];
        await using var nbdkit = await NbdkitServer.StartAsync(["file", image, .. multiConnArgs, "delay-write=2ms", "delay-zero=2ms"],
            new NbdkitOptions { Filters = filters });
        var ticket = await fixture.AddTicketAsync(["write"], t =>
        {
            t["url"] = nbdkit.ImageioUrl;
            t["size"] = Size;
        });

        using var handler = new SocketsHttpHandler { MaxConnectionsPerServer = 8 };
        using var http = new HttpClient(handler) { BaseAddress = fixture.RemoteUri };
        var writes = new ConcurrentBag<HttpWriteFact>();
        var flushes = new ConcurrentBag<HttpFlushFact>();
        var url = $"/images/{ticket}";

        async Task WriterAsync(int seed)
        {
            var random = new Random(seed);
            for (var i = 0; i < 125; i++)
            {
                var length = random.Next(1, 33) * 4096;
                var offset = random.NextInt64(0, (Size - length) / 512) * 512;
                var zero = random.Next(8) == 0;
                var sent = DateTimeOffset.Now;
                HttpResponseMessage response;
                if (zero)
                {
                    var body = $"{{\"op\": \"zero\", \"offset\": {offset}, \"size\": {length}, \"flush\": false}}";
                    response = await http.PatchAsync(url, new StringContent(body, Encoding.UTF8, "application/json"));
                }
                else
                {
                    var data = new byte[length];
                    random.NextBytes(data);
                    var content = new ByteArrayContent(data);
                    content.Headers.ContentRange = new ContentRangeHeaderValue(offset, offset + length - 1);
                    response = await http.PutAsync($"{url}?flush=n", content);
                }
                using (response)
                {
                    response.StatusCode.Should().Be(HttpStatusCode.OK, await response.Content.ReadAsStringAsync());
                }
                writes.Add(new HttpWriteFact(offset, length, zero, sent, DateTimeOffset.Now));
            }
        }

        async Task FlusherAsync(CancellationToken stop)
        {
            while (!stop.IsCancellationRequested)
            {
                var sent = DateTimeOffset.Now;
                using var response = await http.PatchAsync(url, new StringContent("{\"op\": \"flush\"}", Encoding.UTF8, "application/json"), CancellationToken.None);
                response.StatusCode.Should().Be(HttpStatusCode.OK, await response.Content.ReadAsStringAsync(CancellationToken.None));
                flushes.Add(new HttpFlushFact(sent, DateTimeOffset.Now));
                await Task.Delay(10, CancellationToken.None);
            }
        }

        using var stop = new CancellationTokenSource();
        var flushers = Enumerable.Range(0, 2).Select(_ => FlusherAsync(stop.Token)).ToList();
        await Task.WhenAll(Enumerable.Range(0, 8).Select(WriterAsync)).WaitAsync(TimeSpan.FromMinutes(4));
        await stop.CancelAsync();
        await Task.WhenAll(flushers).WaitAsync(TimeSpan.FromMinutes(1));
        var last = DateTimeOffset.Now;
        using (var final = await http.PatchAsync(url, new StringContent("{\"op\": \"flush\"}", Encoding.UTF8, "application/json")))
            final.StatusCode.Should().Be(HttpStatusCode.OK);
        flushes.Add(new HttpFlushFact(last, DateTimeOffset.Now, "final flush"));
        await fixture.RemoveTicketAsync(ticket);

        writes.Should().HaveCount(1000);
        flushes.Count.Should().BeGreaterThan(10, "flushes must interleave with the writes for the proof to mean anything");
        // Stop nbdkit before reading its log: the log filter's last lines may still sit in its stdio buffer.
        await nbdkit.StopAsync();
        var requests = NbdkitLog.PairRequests(NbdkitLog.ParseFile(nbdkit.LogFilePath!));
        var connections = requests.Where(r => r.IsWriteLike).Select(r => r.Connection).Distinct().Count();
        if (multiConn)
            connections.Should().BeGreaterThan(1, "with multi-conn the pool spreads writes over several NBD connections");
        else
            connections.Should().Be(1, "without multi-conn the pool must use one NBD connection");
        var violations = FlushBarrierChecker.Check(requests, writes, flushes, multiConn);
        if (violations.Count > 0 && Environment.GetEnvironmentVariable("FLUSH_PROOF_DUMP") is { } dump)
        {
            File.Copy(nbdkit.LogFilePath!, dump + ".log", true);
            await File.WriteAllLinesAsync(dump + ".http", writes.Select(w => $"W {w.Offset} {w.Length} {w.IsZero} {w.RequestSent:HH:mm:ss.ffffff} {w.ResponseReceived:HH:mm:ss.ffffff}")
                .Concat(flushes.Select(f => $"F {f.RequestSent:HH:mm:ss.ffffff} {f.ResponseReceived:HH:mm:ss.ffffff}")).Concat(violations));
        }
        FlushBarrierChecker.AssertHolds(requests, writes, flushes, multiConn);
    }
}

internal sealed class DeleteOnDispose(string path) : IDisposable
{
    public void Dispose() => File.Delete(path);
}
