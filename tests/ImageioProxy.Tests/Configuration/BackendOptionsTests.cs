using ImageioProxy.Configuration;
using ImageioProxy.Hosting;
using Microsoft.Extensions.Configuration;

namespace ImageioProxy.Tests.Configuration;

public class BackendOptionsTests
{
    [Fact]
    public void NbdConnections_0_means_one_per_core_at_most_4_as_nbdcopy_does()
    {
        new BackendOptions().EffectiveNbdConnections.Should().Be(Math.Clamp(Environment.ProcessorCount, 1, 4));
        new BackendOptions { NbdConnections = 7 }.EffectiveNbdConnections.Should().Be(7, "an explicit value is taken as given");
    }

    [Fact]
    public void Zero_copy_writes_are_on_by_default()
    {
        // The library leaves them off (its callers may reuse a failed write's buffer); the proxy never does.
        new BackendOptions().ZeroCopyWrites.Should().BeTrue();
    }

    [Fact]
    public void A_negative_NbdConnections_is_refused_at_start()
    {
        var act = () => ProxyServer.Create([], config => config.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Tls:Enable"] = "false",
            ["Backend:NbdConnections"] = "-1",
        }));

        act.Should().Throw<InvalidOperationException>().Which.Message.Should().Contain("Backend:NbdConnections at least 0");
    }

    [Theory]
    [InlineData("Backend:NbdRequestSize", "100")]
    [InlineData("Backend:NbdRequestSize", "67108864")]
    [InlineData("Backend:SpliceRequestSize", "100000")] // not a multiple of 4 KiB
    [InlineData("Backend:SpliceRequestSize", "2048")]
    [InlineData("Backend:SpliceRequestSize", "67108864")]
    public void A_request_size_outside_4_KiB_to_32_MiB_is_refused_at_start(string key, string value)
    {
        var act = () => ProxyServer.Create([], config => config.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Tls:Enable"] = "false",
            [key] = value,
        }));

        act.Should().Throw<InvalidOperationException>().Which.Message.Should().Contain($"{key}={value} must be 0");
    }

    [Fact]
    public void NbdRequestSize_defaults_to_one_request_per_chunk_and_SpliceRequestSize_to_120_KiB()
    {
        // 256 KiB requests measured 0.89x for four parallel uploads (docs/benchmarks.md, fourth round); cutting
        // copied chunks into 120 KiB parts measured 0.83x over the unix socket, spliced ones 1.1-1.3x faster
        // over TCP (seventh round).
        new BackendOptions().NbdRequestSize.Should().Be(0);
        new BackendOptions().SpliceRequestSize.Should().Be(120 * 1024);
    }

    [Theory]
    [InlineData(0, 120 * 1024, 1024 * 1024, 64L * 1024 * 1024, 547)]
    [InlineData(0, 0, 1024 * 1024, 64L * 1024 * 1024, 64)]
    [InlineData(4096, 0, 1024 * 1024, 1024L * 1024 * 1024, 4096)]
    public void Each_NBD_connection_may_carry_as_many_requests_as_the_byte_budget_holds(int requestSize, int spliceRequestSize, int chunkSize,
        long budget, int expected)
    {
        var backend = new BackendOptions { NbdRequestSize = requestSize, SpliceRequestSize = spliceRequestSize, ChunkSize = chunkSize, MaxInFlightBytes = budget };

        ImageioProxy.Tickets.TicketStore.MaxRequestsInFlight(backend).Should().Be(expected, "at least 64, at most 4096");
    }
}
