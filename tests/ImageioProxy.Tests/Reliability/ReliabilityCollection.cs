using ImageioProxy.Tests.Support;

namespace ImageioProxy.Tests.Reliability;

/// <summary>The reliability tests run alone, after the parallel ones: they start child processes, kill
/// servers, rely on short timeouts and measure the memory of a loaded proxy, none of which should compete
/// with other tests for the two cores.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ReliabilityCollection
{
    public const string Name = "Reliability (serial)";
}

/// <summary>An in-process proxy with short failure timeouts, so that faults surface within seconds
/// (docs/reliability.md lists the production defaults).</summary>
public sealed class FaultProxyFixture : ProxyFixture
{
    public static readonly IReadOnlyDictionary<string, string?> ShortTimeouts = new Dictionary<string, string?>
    {
        ["Backend:RequestTimeout"] = "2",
        ["Backend:ConnectTimeout"] = "2",
        ["Backend:ReconnectAttempts"] = "3",
        ["Backend:ReconnectDelay"] = "0.05",
        ["Backend:ReconnectMaxDelay"] = "0.2",
        ["Backend:BreakerFailureThreshold"] = "3",
        ["Backend:BreakerBreakDuration"] = "1",
    };

    public FaultProxyFixture() : base("raw", settings: ShortTimeouts) { }
}
