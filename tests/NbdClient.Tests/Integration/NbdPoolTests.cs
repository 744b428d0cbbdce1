using System.Text.RegularExpressions;
using TestSupport;

namespace NbdClient.Tests.Integration;

public partial class NbdPoolTests
{
    private const long Size = 64L << 20;

    [Theory]
    [InlineData(8, 4)]
    [InlineData(1, 1)]
    public async Task OpensMoreConnections_OnlyWithMultiConn(int shared, int expectedConnections)
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", Size);
        await using var server = await QemuNbdServer.StartAsync(image, new QemuNbdOptions { Shared = shared });
        await using var pool = await NbdPool.ConnectAsync(Endpoints.Of(server), new NbdPoolOptions { MaxConnections = 4 });
        pool.ConnectionCount.Should().Be(expectedConnections);
    }

    [Fact]
    public async Task ParallelUpload_ThenFlush_IsExactlyTheSource()
    {
        using var dir = TempDirectory.Create();
        var source = await QemuImg.WriteRandomImageAsync(dir.Combine("source.raw"), Size, seed: 5);
        var image = dir.Combine("disk.qcow2");
        await QemuImg.CreateAsync(image, "qcow2", Size);
        await using (var server = await QemuNbdServer.StartAsync(image, new QemuNbdOptions { Format = "qcow2" }))
        await using (var pool = await NbdPool.ConnectAsync(Endpoints.Of(server)))
        {
            var bytes = await File.ReadAllBytesAsync(source.Path);
            var chunk = 1 << 20;
            var writes = new List<Task>();
            for (var offset = 0; offset < bytes.Length; offset += chunk)
            {
                var part = bytes.AsMemory(offset, chunk);
                writes.Add(part.Span.IndexOfAnyExcept((byte)0) < 0
                    ? pool.WriteZeroesAsync(offset, chunk).AsTask()
                    : pool.WriteAsync(offset, part).AsTask());
            }
            await Task.WhenAll(writes).WaitAsync(Endpoints.Bound);
            await pool.FlushAsync();
            var back = new byte[bytes.Length];
            await pool.ReadAsync(0, back); // above the maximum payload: parts back to back on one connection
            back.AsSpan().SequenceEqual(bytes).Should().BeTrue();
        }
        var compare = await QemuImg.CompareAsync(source.Path, image, "raw", "qcow2");
        compare.Identical.Should().BeTrue(compare.Output);
    }

    [Fact]
    public async Task OverlappingWrites_TakeEffectInSubmissionOrder()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", Size);
        await using var server = await QemuNbdServer.StartAsync(image);
        await using var pool = await NbdPool.ConnectAsync(Endpoints.Of(server));
        pool.ConnectionCount.Should().BeGreaterThan(1, "the test needs writes spread over connections");

        // Many writes to the same range, each shifted a little, submitted without waiting.
        var writes = new List<Task>();
        byte[] last = [];
        for (var i = 0; i < 64; i++)
        {
            last = Endpoints.RandomBytes(1 << 20, 1000 + i);
            writes.Add(pool.WriteAsync((i % 4) * 4096, last).AsTask());
        }
        await Task.WhenAll(writes).WaitAsync(Endpoints.Bound);
        var back = new byte[1 << 20];
        await pool.ReadAsync(3 * 4096, back);
        back.Should().Equal(last, "the last submitted write wins");
    }

    [Theory]
    [InlineData(256 * 1024, new[] { 262144, 262144, 262144, 262144, 100 })]
    [InlineData(0, new[] { 1048676 })]
    public async Task MaxRequestSize_SplitsReadsAndWrites_IntoRequestsOfAtMostThatSize(int maxRequestSize, int[] expectedCounts)
    {
        await using var server = await NbdkitServer.StartAsync(["memory", "16M"], new NbdkitOptions { Filters = ["log"] });
        await using var pool = await NbdPool.ConnectAsync(Endpoints.Of(server), new NbdPoolOptions { MaxRequestSize = maxRequestSize });
        var data = Endpoints.RandomBytes((1 << 20) + 100, 31);

        await pool.WriteAsync(4096, data);
        var back = new byte[data.Length];
        await pool.ReadAsync(4096, back);

        back.Should().Equal(data);
        var requests = (await server.ReadLogLinesAsync())
            .Select(line => RequestLine().Match(line))
            .Where(m => m.Success)
            .Select(m => (Connection: m.Groups[1].Value, Op: m.Groups[2].Value, Offset: Convert.ToInt64(m.Groups[3].Value, 16), Count: Convert.ToInt32(m.Groups[4].Value, 16)))
            .ToList();
        foreach (var op in new[] { "Write", "Read" })
        {
            var parts = requests.Where(r => r.Op == op).OrderBy(r => r.Offset).ToList();
            parts.Select(p => p.Count).Should().Equal(expectedCounts, $"each {op} is cut at the limit");
            parts.Select(p => p.Offset).Should().Equal(expectedCounts.Select((_, i) => 4096L + expectedCounts.Take(i).Sum(c => (long)c)));
            parts.Select(p => p.Connection).Distinct().Should().ContainSingle($"the parts of one {op} go out back to back on one connection");
        }
    }

    [Fact]
    public async Task CancellingAReadCutIntoParts_EndsIt_AndLeavesThePoolUsable()
    {
        // One request in flight per connection: the first part waits at the paused server, the others for a slot.
        await using var server = await NbdkitServer.StartAsync(["memory", "16M"], new NbdkitOptions { Filters = ["pause"] });
        await using var pool = await NbdPool.ConnectAsync(Endpoints.Of(server),
            new NbdPoolOptions { MaxRequestSize = 64 * 1024, MaxConnections = 1, Connection = new NbdClientOptions { MaxInFlight = 1 } });
        var data = Endpoints.RandomBytes(4096, 41);
        await pool.WriteAsync(1 << 20, data);
        await Endpoints.CancelWhilePausedAsync(server, cancel => pool.ReadAsync(0, new byte[4 * 64 * 1024], cancel).AsTask());

        // The first part was on the wire: its reply is read and dropped, and the pool goes on.
        var back = new byte[data.Length];
        await pool.ReadAsync(1 << 20, back).AsTask().WaitAsync(Endpoints.Bound);
        back.Should().Equal(data);
        pool.InFlight.Should().Be(0);
    }

    [GeneratedRegex(@"connection=(\d+) (Write|Read) id=\d+ offset=0x([0-9a-f]+) count=0x([0-9a-f]+)")]
    private static partial Regex RequestLine();

    [GeneratedRegex(@"connection=(\d+) (\.\.\.)?(Write|Zero|Trim|Flush) id=(\d+)")]
    private static partial Regex LogLine();

    private sealed record LogEvent(int Line, int Connection, string Op, bool Return);

    private static List<LogEvent> ParseLog(IReadOnlyList<string> lines) =>
        [.. lines.Select((text, index) => (text, index))
            .Select(l => (l.index, match: LogLine().Match(l.text)))
            .Where(l => l.match.Success)
            .Select(l => new LogEvent(l.index, int.Parse(l.match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), l.match.Groups[3].Value, l.match.Groups[2].Success))];

    [Theory]
    [InlineData("auto", 4, 1)]
    [InlineData("disable", 1, 1)]
    public async Task Flush_WaitsForEveryWrite_ThenFlushesOnceOrEveryDirtyConnection(string multiConnMode, int connections, int flushes)
    {
        using var dir = TempDirectory.Create();
        var file = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(file, "raw", Size);
        // Slow writes: the barrier really has to wait. multi-conn-track-dirty=off: the filter must not elide flushes.
        await using var server = await NbdkitServer.StartAsync(["file", file, $"multi-conn-mode={multiConnMode}", "multi-conn-track-dirty=off", "delay-write=20ms"],
            new NbdkitOptions { Filters = ["multi-conn", "log", "delay"] });
        await using var pool = await NbdPool.ConnectAsync(Endpoints.Of(server), new NbdPoolOptions { MaxConnections = 4 });
        pool.ConnectionCount.Should().Be(connections);

        var writes = Enumerable.Range(0, 32).Select(i => pool.WriteAsync(i * (1L << 20), Endpoints.RandomBytes(1 << 20, i)).AsTask()).ToList();
        await pool.FlushAsync().AsTask().WaitAsync(Endpoints.Bound);
        writes.Should().OnlyContain(w => w.IsCompletedSuccessfully, "the barrier waits for every write submitted before the flush");

        var events = ParseLog(await server.ReadLogLinesAsync());
        var flushStarts = events.Where(e => e.Op == "Flush" && !e.Return).ToList();
        flushStarts.Should().HaveCount(flushes);
        var lastWriteReturn = events.Where(e => e.Op == "Write" && e.Return).Max(e => e.Line);
        flushStarts.Should().OnlyContain(f => f.Line > lastWriteReturn, "NBD_CMD_FLUSH goes out only after every covered write was acknowledged");
        var writers = events.Where(e => e.Op == "Write" && !e.Return).Select(e => e.Connection).Distinct().Count();
        if (connections == 1)
            writers.Should().Be(1, "without multi-conn every write goes over the one connection");
        else
            writers.Should().BeGreaterThan(1, "with multi-conn the writes are spread over the pool");
    }

    [Fact]
    public async Task DeadConnections_AreReplacedOnNextUse_AndLostUnflushedWritesFailTheNextFlush()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", Size);
        var server = await QemuNbdServer.StartAsync(image, new QemuNbdOptions { Cache = "writeback" });
        var socket = server.SocketPath;
        // No circuit breaker: the restarted server must be used at once (the breaker has its own test).
        await using var pool = await NbdPool.ConnectAsync(Endpoints.Of(server),
            new NbdPoolOptions { ReconnectAttempts = 3, ReconnectDelay = TimeSpan.FromMilliseconds(50), BreakerFailureThreshold = 0 });
        await pool.WriteAsync(0, Endpoints.RandomBytes(1 << 20, 21)); // acknowledged, not flushed

        server.Kill();
        await server.Process.WaitForExitAsync(Endpoints.Bound);
        await FluentActions.Awaiting(() => pool.ReadAsync(0, new byte[4096]).AsTask().WaitAsync(Endpoints.Bound)).Should().ThrowAsync<NbdException>();

        // Restart the server on the same socket; the pool reconnects by itself.
        File.Delete(socket);
        await using var restarted = await ExternalProcessStart(image, socket);
        var data = Endpoints.RandomBytes(1 << 20, 22);
        await pool.WriteAsync(2 << 20, data).AsTask().WaitAsync(Endpoints.Bound);
        var flush = await FluentActions.Awaiting(() => pool.FlushAsync().AsTask().WaitAsync(Endpoints.Bound)).Should().ThrowAsync<NbdException>();
        flush.Which.Message.Should().Contain("unflushed");
        await pool.FlushAsync(); // reported once; the client resends and flushes again
        var back = new byte[data.Length];
        await pool.ReadAsync(2 << 20, back);
        back.Should().Equal(data);
        pool.ConnectionCount.Should().BeGreaterThan(0);
        await server.DisposeAsync();
    }

    [Fact]
    public async Task DeadServer_OpensTheCircuit_SoRequestsFailAtOnce_UntilAProbeAfterTheBreakSucceeds()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", Size);
        var server = await QemuNbdServer.StartAsync(image, new QemuNbdOptions { Cache = "writeback" });
        var socket = server.SocketPath;
        await using var pool = await NbdPool.ConnectAsync(Endpoints.Of(server), new NbdPoolOptions
        {
            ReconnectAttempts = 3,
            ReconnectDelay = TimeSpan.FromMilliseconds(20),
            BreakerFailureThreshold = 3,
            // Long enough that the second request still finds the circuit open on a loaded CI machine
            // (with 1 s it sometimes came after the break and probed: ConnectFailed, not CircuitOpen).
            BreakerBreakDuration = TimeSpan.FromSeconds(5),
        });

        server.Kill();
        await server.Process.WaitForExitAsync(Endpoints.Bound);
        // Until the reader loop sees EOF the first request could still go to the old connection and fail
        // there (ConnectionClosed), leaving the three connection attempts to the second request.
        var noticed = Task.Run(async () =>
        {
            while (pool.ConnectionCount > 0)
                await Task.Delay(10);
        });
        await noticed.WaitAsync(Endpoints.Bound);
        // The first request makes the three attempts (the last one opens the circuit); the next fails at once.
        var first = await FluentActions.Awaiting(() => pool.ReadAsync(0, new byte[4096]).AsTask().WaitAsync(Endpoints.Bound))
            .Should().ThrowAsync<NbdConnectionException>();
        var second = await FluentActions.Awaiting(() => pool.ReadAsync(0, new byte[4096]).AsTask().WaitAsync(Endpoints.Bound))
            .Should().ThrowAsync<NbdConnectionException>();
        File.Delete(socket);
        await using var restarted = await ExternalProcessStart(image, socket);
        var recovered = false;
        for (var attempt = 0; attempt < 1000 && !recovered; attempt++)
        {
            try
            {
                await pool.ReadAsync(0, new byte[4096]).AsTask().WaitAsync(Endpoints.Bound);
                recovered = true;
            }
            catch (NbdConnectionException ex) when (ex.Reason == NbdConnectionFailure.CircuitOpen)
            {
                await Task.Delay(50);
            }
        }

        first.Which.Reason.Should().NotBe(NbdConnectionFailure.CircuitOpen);
        second.Which.Reason.Should().Be(NbdConnectionFailure.CircuitOpen);
        second.Which.RetryAfter.Should().NotBeNull();
        second.Which.Message.Should().Contain("circuit open");
        recovered.Should().BeTrue("once the break is over a probe reaches the restarted server and closes the circuit");
        await server.DisposeAsync();
    }

    private static async Task<ExternalProcess> ExternalProcessStart(string image, string socket)
    {
        var process = ExternalProcess.Start("qemu-nbd", ["-f", "raw", "--persistent", "--shared=8", "--cache=writeback", "-k", socket, image],
            new ExternalProcessOptions { Environment = QemuNbdServer.DefaultEnvironment });
        await process.WaitForUnixSocketAsync(socket, Endpoints.Bound);
        return process;
    }
}
