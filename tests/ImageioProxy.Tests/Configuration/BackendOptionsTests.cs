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
    [InlineData("100")]
    [InlineData("67108864")]
    public void An_NbdRequestSize_outside_4_KiB_to_32_MiB_is_refused_at_start(string value)
    {
        var act = () => ProxyServer.Create([], config => config.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Tls:Enable"] = "false",
            ["Backend:NbdRequestSize"] = value,
        }));

        act.Should().Throw<InvalidOperationException>().Which.Message.Should().Contain($"Backend:NbdRequestSize={value} must be 0");
    }

    [Fact]
    public void NbdRequestSize_defaults_to_one_request_per_chunk()
    {
        // 256 KiB requests measured 0.89x for four parallel uploads (docs/benchmarks.md, fourth round).
        new BackendOptions().NbdRequestSize.Should().Be(0);
    }
}
