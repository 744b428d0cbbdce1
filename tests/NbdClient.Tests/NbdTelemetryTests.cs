using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using NbdClient.Tests.Integration;
using TestSupport;

namespace NbdClient.Tests;

public class NbdTelemetryTests
{
    [Fact]
    public async Task RequestsAreMeasured_AndFlushIsTraced_UnderFixedNames()
    {
        var measurements = new ConcurrentBag<(string Instrument, string? Command)>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == NbdTelemetry.MeterName)
                l.EnableMeasurementEvents(instrument);
        };
        void Record(Instrument instrument, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            string? command = null;
            foreach (var tag in tags)
            {
                if (tag.Key == "nbd.command")
                    command = tag.Value as string;
            }
            measurements.Add((instrument.Name, command));
        }
        listener.SetMeasurementEventCallback<double>((instrument, _, tags, _) => Record(instrument, tags));
        listener.SetMeasurementEventCallback<long>((instrument, _, tags, _) => Record(instrument, tags));
        listener.Start();

        var activities = new ConcurrentBag<string>();
        using var activityListener = new ActivityListener
        {
            ShouldListenTo = source => source.Name == NbdTelemetry.ActivitySourceName,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllData,
            ActivityStopped = activity => activities.Add(activity.OperationName),
        };
        ActivitySource.AddActivityListener(activityListener);

        await using var server = await NbdkitServer.StartAsync(["memory", "64M"]);
        await using (var pool = await NbdPool.ConnectAsync(Endpoints.Of(server)))
        {
            await pool.WriteAsync(0, new byte[65536]);
            await pool.WriteZeroesAsync(65536, 65536);
            await pool.FlushAsync();
        }

        measurements.Should().Contain(("nbd.client.request.duration", "write"));
        measurements.Should().Contain(("nbd.client.request.duration", "flush"));
        measurements.Should().Contain(("nbd.client.io", "write_zeroes"));
        measurements.Should().Contain(m => m.Instrument == "nbd.client.connections");
        activities.Should().Contain(["nbd.connect", "nbd.flush", "nbd.write_zeroes"]);
    }
}
