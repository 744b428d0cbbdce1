using System.Collections;
using System.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Trace;

namespace ImageioProxy.Tests.Support;

/// <summary>ProxyFixture with the monitoring listener on a free port, every log entry captured (Trace
/// level, with scopes) instead of printed, spans collected by OpenTelemetry's in-memory exporter, and
/// 127.0.0.1 as a trusted reverse proxy.</summary>
public class MonitoredProxyFixture : ProxyFixture
{
    public MonitoredProxyFixture() : this(new Dictionary<string, string?>())
    {
    }

    protected MonitoredProxyFixture(IReadOnlyDictionary<string, string?> extra, long imageSize = DefaultImageSize)
        : base("raw", imageSize, Merge(extra))
    {
    }

    public CapturedLogs Logs { get; } = new();

    /// <summary>Spans as exported (after every processor ran).</summary>
    public SpanCollection Spans { get; } = new();

    /// <summary>HttpClient for the monitoring listener.</summary>
    public HttpClient Monitoring => new() { BaseAddress = new Uri($"http://127.0.0.1:{Server.MonitoringPort}") };

    protected override void ConfigureServices(IServiceCollection services)
    {
        services.RemoveAll<ILoggerProvider>();
        services.AddSingleton<ILoggerProvider>(Logs);
        services.ConfigureOpenTelemetryTracerProvider(tracing => tracing.AddInMemoryExporter(Spans));
    }

    private static Dictionary<string, string?> Merge(IReadOnlyDictionary<string, string?> extra)
    {
        var settings = new Dictionary<string, string?>
        {
            ["Monitoring:Host"] = "127.0.0.1",
            ["Monitoring:Port"] = "0",
            ["Logging:LogLevel:Default"] = "Trace",
            ["ForwardedHeaders:KnownProxies:0"] = "127.0.0.1",
        };
        foreach (var (key, value) in extra)
        {
            settings[key] = value;
        }
        return settings;
    }
}

/// <summary>A thread-safe collection for the in-memory exporter, read while requests still run.</summary>
public sealed class SpanCollection : ICollection<Activity>
{
    private readonly List<Activity> _items = [];

    public int Count
    {
        get { lock (_items) { return _items.Count; } }
    }

    public bool IsReadOnly => false;

    public IReadOnlyList<Activity> Snapshot()
    {
        lock (_items)
        {
            return [.. _items];
        }
    }

    public void Add(Activity item)
    {
        lock (_items)
        {
            _items.Add(item);
        }
    }

    public void Clear()
    {
        lock (_items)
        {
            _items.Clear();
        }
    }

    public bool Contains(Activity item)
    {
        lock (_items)
        {
            return _items.Contains(item);
        }
    }

    public void CopyTo(Activity[] array, int arrayIndex)
    {
        lock (_items)
        {
            _items.CopyTo(array, arrayIndex);
        }
    }

    public bool Remove(Activity item)
    {
        lock (_items)
        {
            return _items.Remove(item);
        }
    }

    public IEnumerator<Activity> GetEnumerator() => Snapshot().GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}
