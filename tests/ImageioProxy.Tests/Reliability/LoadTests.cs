using System.Globalization;
using ImageioProxy.Tests.Support;
using TestSupport;
using Xunit.Abstractions;

namespace ImageioProxy.Tests.Reliability;

/// <summary>Sustained mixed traffic against the proxy as a child process with production defaults: 64 HTTP
/// connections over 8 tickets (8 per ticket, the default Daemon:MaxConnections), each owning a region of
/// its ticket's image (imageio: concurrent writers use distinct ranges) and checking every read against
/// its own model of that region. Bounded in time (a fixed traffic window), not in operations.</summary>
[Collection(ReliabilityCollection.Name)]
public sealed class LoadTests(ITestOutputHelper output)
{
    private const int MiB = 1024 * 1024;
    private const int Tickets = 8;
    private const int ConnectionsPerTicket = 8;
    private const int RegionSize = (int)(ProxyFixture.DefaultImageSize / ConnectionsPerTicket);

    /// <summary>How long the 64 connections send traffic.</summary>
    private static readonly TimeSpan TrafficWindow = TimeSpan.FromSeconds(12);

    /// <summary>Peak resident memory allowed to the proxy under this load. Measured peaks and the reason for
    /// the margin are in docs/reliability.md ("Memory under load").</summary>
    private const long PeakResidentBound = 384L * MiB;

    [Fact]
    public async Task Sixty_four_connections_on_eight_tickets_mixed_traffic_has_no_errors_every_image_verifies_and_memory_stays_bounded()
    {
        using var directory = TempDirectory.Create("load");
        var servers = new List<QemuNbdServer>();
        try
        {
            for (var t = 0; t < Tickets; t++)
            {
                var image = directory.Combine($"disk{t}.raw");
                await QemuImg.CreateAsync(image, "raw", ProxyFixture.DefaultImageSize);
                servers.Add(await QemuNbdServer.StartAsync(image, new QemuNbdOptions { Cache = "writeback" }));
            }
            await using var proxy = await ChildProxy.StartAsync(directory.Path, new Dictionary<string, string>
            {
                // Production defaults, less the per-request Information logs (console output costs CPU here).
                ["Logging:LogLevel:Default"] = "Warning",
                ["Logging:LogLevel:ImageioProxy.Hosting.ProxyServer"] = "Information",
            });
            var tickets = servers.Select(s => ReliabilityTickets.For(s.ImageioUrl)).ToList();
            foreach (var ticket in tickets)
            {
                await proxy.AddTicketAsync(ticket);
            }
            var baseline = proxy.ResidentBytes();

            using var sampling = new CancellationTokenSource();
            var sampler = SamplePeakAsync(proxy, sampling.Token);
            using var window = new CancellationTokenSource(TrafficWindow);
            var workers = new List<Worker>();
            for (var t = 0; t < Tickets; t++)
            {
                for (var w = 0; w < ConnectionsPerTicket; w++)
                {
                    workers.Add(new Worker(proxy.RemoteUri, (string)tickets[t]["uuid"]!, w * RegionSize, seed: t * ConnectionsPerTicket + w));
                }
            }
            // Bounded: the window ends the loops, the bound catches a request that hangs.
            await Task.WhenAll(workers.Select(w => w.RunAsync(window.Token))).WaitAsync(TrafficWindow + ReliabilityHttp.Bound * 2);
            await sampling.CancelAsync();
            var sampledPeak = await sampler;
            var peak = proxy.PeakResidentBytes();
            foreach (var worker in workers)
            {
                worker.Dispose();
            }

            var mismatches = new List<string>();
            for (var t = 0; t < Tickets; t++)
            {
                var expected = directory.Combine($"expected{t}.raw");
                await using (var file = File.Create(expected))
                {
                    foreach (var worker in workers.Skip(t * ConnectionsPerTicket).Take(ConnectionsPerTicket))
                    {
                        await file.WriteAsync(worker.Model);
                    }
                }
                var compare = await QemuImg.CompareAsync(expected, servers[t].Uri);
                if (!compare.Identical)
                {
                    mismatches.Add($"ticket {t}: {compare.Output}");
                }
                File.Delete(expected);
            }

            var operations = workers.Sum(w => w.Operations);
            var bytes = workers.Sum(w => w.Bytes);
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{operations} requests, {bytes / (double)MiB:0} MiB moved in {TrafficWindow.TotalSeconds} s; proxy RSS: {baseline / (double)MiB:0} MiB idle, peak {peak / (double)MiB:0} MiB (VmHWM), highest sample {sampledPeak / (double)MiB:0} MiB"));
            workers.SelectMany(w => w.Errors).Should().BeEmpty(proxy.Process.Output);
            mismatches.Should().BeEmpty();
            operations.Should().BeGreaterThan(workers.Count * 3, "every connection took part in the load");
            peak.Should().BeLessThan(PeakResidentBound, "docs/reliability.md states the bound");
        }
        finally
        {
            foreach (var server in servers)
            {
                await server.DisposeAsync();
            }
        }
    }

    private static async Task<long> SamplePeakAsync(ChildProxy proxy, CancellationToken cancellationToken)
    {
        long peak = 0;
        try
        {
            while (true)
            {
                peak = Math.Max(peak, proxy.ResidentBytes());
                await Task.Delay(200, cancellationToken);
            }
        }
        catch (OperationCanceledException)
        {
            return peak;
        }
    }

    /// <summary>One HTTP connection doing PUT, GET, PATCH zero and PATCH flush at random inside its own
    /// region, checking every GET against <see cref="Model"/>.</summary>
    private sealed class Worker : IDisposable
    {
        private readonly HttpClient _client;
        private readonly ReliabilityHttp _http;
        private readonly string _ticketId;
        private readonly long _regionOffset;
        private readonly Random _random;
        private string _op = "";

        public Worker(Uri proxy, string ticketId, long regionOffset, int seed)
        {
            // One connection per worker: 8 per ticket, the ticket's limit.
            _client = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 1 }) { Timeout = ReliabilityHttp.Bound };
            _http = new ReliabilityHttp(_client, proxy);
            _ticketId = ticketId;
            _regionOffset = regionOffset;
            _random = new Random(seed);
        }

        /// <summary>What the region must hold.</summary>
        public byte[] Model { get; } = new byte[RegionSize];

        public List<string> Errors { get; } = [];

        public int Operations { get; private set; }

        public long Bytes { get; private set; }

        public async Task RunAsync(CancellationToken window)
        {
            try
            {
                while (!window.IsCancellationRequested && Errors.Count == 0)
                {
                    await OneAsync();
                    Operations++;
                }
                Check("final flush", await _http.FlushAsync(_ticketId), 200);
            }
            catch (Exception e) when (e is HttpRequestException or TimeoutException or TaskCanceledException)
            {
                Errors.Add($"{_ticketId}@{_regionOffset} after {Operations} requests: {_op}: {e}");
            }
        }

        private async Task OneAsync()
        {
            var dice = _random.Next(100);
            var length = _random.Next(1, dice < 75 ? MiB : 2 * MiB);
            var at = _random.Next(0, RegionSize - length);
            _op = $"{dice} {_regionOffset + at}+{length}";
            if (dice < 45)
            {
                var data = new byte[length];
                _random.NextBytes(data);
                Check("PUT", await _http.PutAsync(_ticketId, _regionOffset + at, data, flush: dice < 5), 200);
                data.CopyTo(Model, at);
                Bytes += length;
            }
            else if (dice < 75)
            {
                var reply = await _http.GetAsync(_ticketId, _regionOffset + at, length);
                Check("GET", reply, 206);
                if (!reply.Body.AsSpan().SequenceEqual(Model.AsSpan(at, length)))
                {
                    Errors.Add($"GET {_regionOffset + at}+{length}: the data differs from what this connection wrote");
                }
                Bytes += length;
            }
            else if (dice < 90)
            {
                Check("zero", await _http.ZeroAsync(_ticketId, _regionOffset + at, length), 200);
                Array.Clear(Model, at, length);
            }
            else
            {
                Check("flush", await _http.FlushAsync(_ticketId), 200);
            }
        }

        private void Check(string what, Reply reply, int status)
        {
            if (reply.Status != status)
            {
                Errors.Add($"{what} {_ticketId}@{_regionOffset}: {reply}");
            }
        }

        public void Dispose() => _client.Dispose();
    }
}
