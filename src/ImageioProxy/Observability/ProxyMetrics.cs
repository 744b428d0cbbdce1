using System.Diagnostics.Metrics;
using ImageioProxy.Hosting;
using ImageioProxy.Tickets;

namespace ImageioProxy.Observability;

/// <summary>The service's own instruments (meter "ImageioProxy", created through IMeterFactory). No
/// attribute ever carries a ticket id: it is the transfer's credential (ecosystem.md §3.4, §5).
/// NbdClient's meter adds the NBD side (request duration by command, in flight, reconnects).</summary>
public sealed class ProxyMetrics
{
    public const string MeterName = "ImageioProxy";

    /// <summary>Attribute naming the operation (read, write, zero, flush, extents, checksum).</summary>
    public const string OperationTag = "imageio.operation";

    /// <summary>Attribute: "ok", or the failure class (error.type semantics).</summary>
    public const string ErrorTypeTag = "error.type";

    /// <summary>Bucket boundaries (s) for everything that may take minutes: a 64 MiB PUT over a slow
    /// link, a flush of a large qcow2, a PATCH zero of a whole disk. The default stops at 10 s.</summary>
    public static readonly double[] LongDurationBuckets =
        [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];

    private readonly TimeProvider _time;
    private readonly Counter<long> _bytes;
    private readonly Histogram<double> _operationDuration;
    private readonly Histogram<double> _flushDuration;
    private readonly Counter<long> _operationFailures;
    private readonly Counter<long> _spliced;

    public ProxyMetrics(IMeterFactory meterFactory, [FromKeyedServices(ProxyServer.ClockKey)] TimeProvider time, TicketStore tickets)
    {
        _time = time;
        var meter = meterFactory.Create(MeterName);
        _bytes = meter.CreateCounter<long>("imageio.proxy.io", unit: "By",
            description: "Bytes written (PUT), read (GET) and zeroed (PATCH zero), by operation.");
        _operationDuration = meter.CreateHistogram("imageio.proxy.operation.duration", unit: "s",
            description: "Duration of data operations, by operation.",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LongDurationBuckets });
        _flushDuration = meter.CreateHistogram("imageio.proxy.flush.duration", unit: "s",
            description: "Duration of flushes: waiting for every covered NBD write, then NBD_CMD_FLUSH.",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LongDurationBuckets });
        _spliced = meter.CreateCounter<long>("imageio.proxy.upload.spliced", unit: "By",
            description: "PUT body bytes moved from the client's socket to the NBD server by splice(2), never copied by the proxy (Http:SpliceUploads).");
        _operationFailures = meter.CreateCounter<long>("imageio.proxy.operation.failures", unit: "{operation}",
            description: "Data operations that failed or were canceled, by operation.");
        meter.CreateObservableUpDownCounter("imageio.proxy.tickets", () => CountTickets(tickets), unit: "{ticket}",
            description: "Installed tickets; state=active while an operation runs, else idle.");
        meter.CreateObservableUpDownCounter("imageio.proxy.nbd.pool.connections", () => CountPoolConnections(tickets), unit: "{connection}",
            description: "NBD connections of the tickets' pools; state=busy when requests are in flight (estimated per pool from its least-loaded dispatch), else idle.");
    }

    /// <summary>A timestamp to pass to <see cref="RecordOperation"/>.</summary>
    /// <summary>Bytes of a PUT body that went from the client's socket to the NBD server by splice(2).</summary>
    public void RecordSpliced(long bytes)
    {
        if (bytes > 0)
        {
            _spliced.Add(bytes);
        }
    }

    public long Start() => _time.GetTimestamp();

    /// <summary>Records one finished data operation in the metrics and in the connection's CLOSE stats.</summary>
    public void RecordOperation(ClientConnection? connection, DataOperationKind kind, long bytes, long startTimestamp, bool succeeded)
    {
        var elapsed = _time.GetElapsedTime(startTimestamp);
        var operation = new KeyValuePair<string, object?>(OperationTag, DataOperationNames.Name(kind));
        if (bytes > 0 && kind is DataOperationKind.Read or DataOperationKind.Write or DataOperationKind.Zero)
        {
            _bytes.Add(bytes, operation);
        }
        if (_operationDuration.Enabled)
        {
            _operationDuration.Record(elapsed.TotalSeconds, operation);
        }
        if (kind == DataOperationKind.Flush)
        {
            _flushDuration.Record(elapsed.TotalSeconds);
        }
        if (!succeeded)
        {
            _operationFailures.Add(1, operation);
        }
        connection?.Stats.Record(kind, bytes, elapsed);
    }

    private static IEnumerable<Measurement<long>> CountTickets(TicketStore tickets)
    {
        long active = 0;
        long idle = 0;
        foreach (var ticket in tickets.All)
        {
            if (ticket.IsActive)
            {
                active++;
            }
            else
            {
                idle++;
            }
        }
        return
        [
            new(active, new KeyValuePair<string, object?>("state", "active")),
            new(idle, new KeyValuePair<string, object?>("state", "idle")),
        ];
    }

    private static IEnumerable<Measurement<long>> CountPoolConnections(TicketStore tickets)
    {
        long busy = 0;
        long idle = 0;
        foreach (var ticket in tickets.All)
        {
            if (ticket.OpenPool is not { } pool)
            {
                continue;
            }
            // NbdPool sends each request to its least-loaded connection, so requests in flight occupy
            // distinct connections first: min(in flight, open) of them are busy.
            var open = pool.ConnectionCount;
            var inUse = Math.Min(open, pool.InFlight);
            busy += inUse;
            idle += open - inUse;
        }
        return
        [
            new(busy, new KeyValuePair<string, object?>("state", "busy")),
            new(idle, new KeyValuePair<string, object?>("state", "idle")),
        ];
    }
}
