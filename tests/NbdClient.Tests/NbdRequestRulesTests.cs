using NbdClient.Protocol;
using NbdClient.Tests.Fakes;

namespace NbdClient.Tests;

/// <summary>What the client puts on the wire, as recorded by the fake server's protocol checks
/// (<see cref="FakeNbdSession.Violations"/>): no zero-length requests, nothing above the advertised
/// maximum payload, alignment, feature flags honoured, DISC last.</summary>
public sealed class NbdRequestRulesTests : FakeServerTestBase
{
    [Fact]
    public async Task ZeroLengthRequests_AreNeverSent()
    {
        var conn = await ConnectAsync();
        await ShouldSucceedAsync(conn.ReadAsync(4096, Memory<byte>.Empty).AsTask(), "read of 0 bytes");
        await ShouldSucceedAsync(conn.WriteAsync(4096, ReadOnlyMemory<byte>.Empty).AsTask(), "write of 0 bytes");
        await ShouldSucceedAsync(conn.WriteZeroesAsync(4096, 0).AsTask(), "zero of 0 bytes");
        await ShouldSucceedAsync(conn.TrimAsync(4096, 0).AsTask(), "trim of 0 bytes");
        await ShouldSucceedAsync(conn.ReadAsync(0, new byte[512]).AsTask(), "a real read");
        var session = await Server.SessionAsync();
        session.Requests.Should().OnlyContain(r => r.Length != 0);
        session.Violations.Should().BeEmpty();
    }

    [Fact]
    public async Task LargeReadsAndWrites_AreSplitAtTheAdvertisedMaximum_Aligned()
    {
        Server.BlockSize = (512, 4096, 65536);
        var conn = await ConnectAsync();
        conn.Export.MaximumPayload.Should().BeLessThanOrEqualTo(65536);

        var data = Pattern(200 * 1024 + 512, 3);
        await ShouldSucceedAsync(conn.WriteAsync(4096, data).AsTask(), "200.5 KiB write");
        var back = new byte[data.Length];
        await ShouldSucceedAsync(conn.ReadAsync(4096, back).AsTask(), "200.5 KiB read");
        back.Should().Equal(data);
        Server.Disk.Read(4096, data.Length).Should().Equal(data);

        var session = await Server.SessionAsync();
        session.Requests.Should().OnlyContain(r => r.Length <= 65536);
        session.Requests.Count(r => r.Type == Wire.CmdWrite).Should().BeGreaterThanOrEqualTo(4);
        session.Violations.Should().BeEmpty();
    }

    [Fact]
    public async Task UnadvertisedFeatures_AreNotSent()
    {
        // HAS_FLAGS | SEND_FLUSH only: no FUA, TRIM, WRITE_ZEROES, CACHE, DF.
        Server.TransmissionFlags = Wire.TfHasFlags | Wire.TfSendFlush;
        var conn = await ConnectAsync();
        var outcomes = new[]
        {
            await OutcomeAsync(Call(() => conn.WriteAsync(0, new byte[512], NbdCommandFlags.Fua)), "FUA write"),
            await OutcomeAsync(Call(() => conn.TrimAsync(0, 512)), "trim"),
            await OutcomeAsync(Call(() => conn.WriteZeroesAsync(0, 512, NbdCommandFlags.FastZero)), "fast zero"),
            await OutcomeAsync(Call(() => conn.CacheAsync(0, 512)), "cache"),
        };
        foreach (var ex in outcomes)
        {
            if (ex is not null)
                ex.Should().BeOfType<NbdRequestRefusedException>("an unadvertised feature is refused locally; got {0}", ex);
        }
        await ShouldSucceedAsync(conn.FlushAsync().AsTask(), "flush");
        (await Server.SessionAsync()).Violations.Should().BeEmpty();
    }

    [Fact]
    public async Task ReadOnlyExport_WritesRefusedLocally()
    {
        Server.TransmissionFlags = 0x0d6d | Wire.TfReadOnly;
        var conn = await ConnectAsync();
        var ex = await OutcomeAsync(Call(() => conn.WriteAsync(0, new byte[512])), "write");
        ex.Should().BeOfType<NbdRequestRefusedException>();
        ex = await OutcomeAsync(Call(() => conn.WriteZeroesAsync(0, 512)), "zero");
        ex.Should().BeOfType<NbdRequestRefusedException>();
        (await Server.SessionAsync()).Requests.Should().BeEmpty();
    }

    [Fact]
    public async Task RequestPastTheEnd_RefusedLocally()
    {
        var conn = await ConnectAsync();
        var ex = await OutcomeAsync(Call(() => conn.ReadAsync((long)Server.Size - 256, new byte[512])), "read past the end");
        ex.Should().BeOfType<NbdRequestRefusedException>();
        (await Server.SessionAsync()).Requests.Should().BeEmpty();
    }

    [Fact]
    public async Task Dispose_WaitsForInFlight_SendsDiscLast()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Server.Transmission = async s =>
        {
            var r = await s.ReadRequestsAsync(3);
            await release.Task.WaitAsync(TestBounds.Hang);
            foreach (var x in r)
                await s.ReplyDefaultAsync(x);
            await s.ServeAsync();
        };
        var conn = await ConnectAsync();
        var tasks = new[]
        {
            conn.WriteAsync(0, Pattern(4096, 1)).AsTask(),
            conn.WriteAsync(8192, Pattern(4096, 2)).AsTask(),
            conn.ReadAsync(65536, new byte[4096]).AsTask(),
        };
        var session = await Server.SessionAsync();
        await session.WaitUntilAsync(s => s.Requests.Count == 3, "three requests arrived");
        var disconnect = conn.DisconnectAsync().AsTask();
        release.SetResult();
        await Bounded(disconnect, "DisconnectAsync");
        foreach (var t in tasks)
            await ShouldSucceedAsync(t, "request in flight at disconnect");
        await Bounded(session.Ended, "session end");
        session.Requests.Should().HaveCount(4);
        session.Requests[^1].Type.Should().Be(Wire.CmdDisc);
        session.Violations.Should().BeEmpty();
        conn.IsClosed.Should().BeTrue();
    }

    [Fact]
    public async Task BlockStatus_UsesTheServersContextId_AndClipsTheLastExtent()
    {
        Server.MetaContexts["base:allocation"] = 7;
        Server.Disk.Write(65536, new byte[] { 1 });
        Server.Transmission = async s =>
        {
            while (await s.ReadRequestAsync() is { } r)
            {
                if (r.Type == Wire.CmdDisc)
                    return;
                if (r.Type != Wire.CmdBlockStatus)
                {
                    await s.ReplyDefaultAsync(r);
                    continue;
                }
                // An unknown context first (must be ignored), then ours with an overshooting last extent.
                await s.SendBlockStatusAsync(r.Cookie, 99, [(r.Length, 0u)], done: false);
                await s.SendBlockStatusAsync(r.Cookie, 7, [(65536, 3u), (65536, 0u), (1u << 20, 3u)], done: true);
            }
        };
        var conn = await ConnectAsync();
        conn.Export.MetaContexts["base:allocation"].Should().Be(7u);
        var extents = await Bounded(conn.GetExtentsAsync(0, 196608).AsTask(), "block status");
        extents.Should().Equal(new NbdExtent(0, 65536, 3), new NbdExtent(65536, 65536, 0), new NbdExtent(131072, 65536, 3));
    }
}
