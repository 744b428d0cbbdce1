using TestSupport;

namespace NbdClient.Tests.Integration;

/// <summary>NbdConnection against real qemu-nbd 7.2 (the production peer), raw and qcow2, --shared=1 and 8.</summary>
public class NbdConnectionQemuTests
{
    private const long Size = 64L << 20;

    [Theory]
    [InlineData("raw", 8, "none")]
    [InlineData("raw", 1, "none")]
    [InlineData("qcow2", 8, "writeback")]
    [InlineData("qcow2", 1, "none")]
    public async Task WritesZeroesAndTrims_LandExactly_AsQemuImgCompareSees(string format, int shared, string cache)
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine($"disk.{format}");
        await QemuImg.CreateAsync(image, format, Size);
        var expected = new byte[Size];
        await using (var server = await QemuNbdServer.StartAsync(image, new QemuNbdOptions { Format = format, Shared = shared, Cache = cache }))
        {
            await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server));
            connection.Export.Size.Should().Be(Size);
            connection.Export.CanMultiConn.Should().Be(shared != 1, "qemu-nbd 7.2 advertises multi-conn iff --shared != 1");
            connection.Export.StructuredReplies.Should().BeTrue();
            connection.Export.MaximumPayload.Should().Be(32 << 20);

            // An unaligned write, a write above the 32 MiB maximum payload (split), zeroes inside data, a trim.
            var first = Endpoints.RandomBytes(3 << 20, 1);
            await connection.WriteAsync(1, first);
            first.CopyTo(expected, 1);
            var big = Endpoints.RandomBytes(40 << 20, 2);
            await connection.WriteAsync(8 << 20, big);
            big.CopyTo(expected, 8 << 20);
            await connection.WriteZeroesAsync(10 << 20, 1 << 20, NbdCommandFlags.NoHole);
            Array.Clear(expected, 10 << 20, 1 << 20);
            await connection.WriteZeroesAsync(12 << 20, 1 << 20);
            Array.Clear(expected, 12 << 20, 1 << 20);
            await connection.FlushAsync();
            connection.IsDirty.Should().BeFalse();

            var back = new byte[Size];
            await connection.ReadAsync(0, back);
            back.AsSpan().SequenceEqual(expected).Should().BeTrue("data read back must be what was written");
            await connection.DisconnectAsync();
        }
        var expectedPath = dir.Combine("expected.raw");
        await File.WriteAllBytesAsync(expectedPath, expected);
        var compare = await QemuImg.CompareAsync(expectedPath, image, "raw", format);
        compare.Identical.Should().BeTrue(compare.Output);
    }

    [Fact]
    public async Task SocketBufferSize_EnlargesTheSendBuffer_AndLargeWritesStillLandExactly()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", Size);
        await using var server = await QemuNbdServer.StartAsync(image);
        int systemDefault;
        using (var plain = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified))
            systemDefault = plain.SendBufferSize;
        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server), new NbdClientOptions { SocketBufferSize = 8 * systemDefault });

        // The kernel caps the value at net.core.wmem_max and doubles it, so it is larger than the default
        // on any sane system, though not necessarily what was asked.
        connection.SocketSendBufferSize.Should().BeGreaterThan(systemDefault);
        var data = Endpoints.RandomBytes(16 << 20, 7);
        await connection.WriteAsync(4096, data);
        var back = new byte[data.Length];
        await connection.ReadAsync(4096, back);
        back.AsSpan().SequenceEqual(data).Should().BeTrue();
    }

    [Fact]
    public async Task ZeroCopyWrites_GoByReference_AndLandExactly()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", Size);
        await using var server = await QemuNbdServer.StartAsync(image);
        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server),
            new NbdClientOptions { ZeroCopyWrites = true, SocketBufferSize = 1 << 20 });
        connection.SendsByReference.Should().BeTrue("a plain unix socket on Linux takes spliced pages");

        // Many writes in flight at once, of sizes around the zero-copy threshold and above the pipe size,
        // from slices that start at odd addresses; a small one (copied) between them keeps the order honest.
        var expected = new byte[Size];
        var writes = new List<Task>();
        var at = 0;
        foreach (var (length, seed) in new[] { (64 << 10, 1), ((64 << 10) - 1, 2), ((5 << 20) + 3, 3), (4096, 4), (1 << 20, 5), (3 << 20, 6) })
        {
            var backing = Endpoints.RandomBytes(length + 7, seed);
            var payload = backing.AsMemory(7, length);
            payload.Span.CopyTo(expected.AsSpan(at));
            writes.Add(connection.WriteAsync(at, payload).AsTask());
            at += length + 4096;
        }
        await Task.WhenAll(writes);
        var back = new byte[Size];
        await connection.ReadAsync(0, back);
        back.AsSpan().SequenceEqual(expected).Should().BeTrue("data read back must be what was written");
        await connection.DisconnectAsync();
    }

    [Fact]
    public async Task ReadAcrossAHole_ZeroFillsTheHole()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", Size);
        await using var server = await QemuNbdServer.StartAsync(image);
        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server));
        var data = Enumerable.Repeat((byte)0xab, 2 << 20).ToArray();
        await connection.WriteAsync(1 << 20, data);

        // The read of nbd-peers.md §5.1: 1 KiB at 0xffe00 comes back as a HOLE chunk + a DATA chunk.
        var buffer = Enumerable.Repeat((byte)0x55, 1024).ToArray();
        await connection.ReadAsync(0xffe00, buffer);
        buffer.AsSpan(0, 512).ToArray().Should().OnlyContain(b => b == 0);
        buffer.AsSpan(512).ToArray().Should().OnlyContain(b => b == 0xab);
    }

    [Fact]
    public async Task GetExtents_ReportsDataAndZeroRuns_Merged()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", Size);
        await using var server = await QemuNbdServer.StartAsync(image);
        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server));
        await connection.WriteAsync(8 << 20, Endpoints.RandomBytes(4 << 20, 3));
        await connection.FlushAsync();

        var extents = await connection.GetExtentsAsync(4 << 20, 16 << 20);
        extents.Sum(e => e.Length).Should().Be(16 << 20);
        extents[0].Offset.Should().Be(4 << 20);
        extents.Should().Contain(e => e.Offset == 8 << 20 && e.Length == 4 << 20 && (e.Flags & NbdMetaContexts.StateZero) == 0);
        extents.Where(e => e.Offset != 8 << 20).Should().OnlyContain(e => (e.Flags & NbdMetaContexts.StateZero) != 0);
        for (var i = 1; i < extents.Count; i++)
        {
            extents[i].Offset.Should().Be(extents[i - 1].End);
            extents[i].Flags.Should().NotBe(extents[i - 1].Flags, "neighbours with equal flags are merged");
        }
    }

    [Fact]
    public async Task DirtyBitmapAndAllocationDepth_AreDiscoveredAndSelected()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.qcow2");
        await QemuImg.CreateAsync(image, "qcow2", Size);
        await ExternalProcess.RunAsync("qemu-img", ["bitmap", "--add", image, "bm0"]);
        await using var server = await QemuNbdServer.StartAsync(image, new QemuNbdOptions { Format = "qcow2", Bitmaps = ["bm0"], AllocationDepth = true });
        var options = new NbdClientOptions { MetaContexts = [NbdMetaContexts.BaseAllocation, NbdMetaContexts.AllocationDepth, NbdMetaContexts.DirtyBitmapPrefix] };
        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server), options);

        connection.Export.MetaContexts.Keys.Should().BeEquivalentTo(
            [NbdMetaContexts.BaseAllocation, NbdMetaContexts.AllocationDepth, "qemu:dirty-bitmap:bm0"]);
        var dirty = await connection.GetExtentsAsync(0, Size, "qemu:dirty-bitmap:bm0");
        dirty.Should().ContainSingle().Which.Flags.Should().Be(0u, "nothing was written since the bitmap was added");
        var depth = await connection.GetExtentsAsync(0, Size, NbdMetaContexts.AllocationDepth);
        depth.Should().ContainSingle().Which.Flags.Should().Be(0u, "an empty qcow2 has nothing allocated");
    }

    [Fact]
    public async Task HundredsOfConcurrentRequests_OnOneConnection_CompleteTheRightCallers()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", Size);
        await using var server = await QemuNbdServer.StartAsync(image);
        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server), new NbdClientOptions { MaxInFlight = 256 });

        var blocks = Enumerable.Range(0, 600).Select(i => Endpoints.RandomBytes(4096, 100 + i)).ToList();
        await Task.WhenAll(blocks.Select((block, i) => connection.WriteAsync(i * 8192L, block).AsTask())).WaitAsync(Endpoints.Bound);
        var reads = blocks.Select(_ => new byte[4096]).ToList();
        await Task.WhenAll(reads.Select((buffer, i) => connection.ReadAsync(i * 8192L, buffer).AsTask())).WaitAsync(Endpoints.Bound);
        for (var i = 0; i < blocks.Count; i++)
            reads[i].Should().Equal(blocks[i], $"block {i} must come back to its own caller");
    }

    [Fact]
    public async Task SecondClientOfSharedOne_GetsAHandshakeTimeout()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", Size);
        await using var server = await QemuNbdServer.StartAsync(image, new QemuNbdOptions { Shared = 1 });
        await using var first = await NbdConnection.ConnectAsync(Endpoints.Of(server));

        var act = () => NbdConnection.ConnectAsync(Endpoints.Of(server), new NbdClientOptions { HandshakeTimeout = TimeSpan.FromSeconds(1) });
        var failure = (await act.Should().ThrowAsync<NbdConnectionException>()).Which;
        failure.Reason.Should().Be(NbdConnectionFailure.HandshakeTimeout);
        failure.Phase.Should().Be(NbdPhase.Handshake);
        failure.Message.Should().Contain("--shared=1");
    }

    [Fact]
    public async Task ReadOnlyExport_RefusesWritesLocally_AndRangesAreChecked()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", Size);
        await using var server = await QemuNbdServer.StartAsync(image, new QemuNbdOptions { ReadOnly = true });
        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server));

        connection.Export.IsReadOnly.Should().BeTrue();
        await FluentActions.Awaiting(() => connection.WriteAsync(0, new byte[512]).AsTask()).Should().ThrowAsync<NbdRequestRefusedException>().WithMessage("*read-only*");
        await FluentActions.Awaiting(() => connection.WriteZeroesAsync(0, 512).AsTask()).Should().ThrowAsync<NbdRequestRefusedException>();
        await FluentActions.Awaiting(() => connection.ReadAsync(Size - 1, new byte[2]).AsTask()).Should().ThrowAsync<NbdRequestRefusedException>().WithMessage("*outside the export*");
        await FluentActions.Awaiting(() => connection.ReadAsync(long.MaxValue, new byte[2]).AsTask()).Should().ThrowAsync<NbdRequestRefusedException>();
        await FluentActions.Awaiting(() => connection.ReadAsync(-1, new byte[2]).AsTask()).Should().ThrowAsync<NbdRequestRefusedException>();
        await connection.ReadAsync(0, Memory<byte>.Empty); // length 0 is never sent: completes at once
        var buffer = new byte[4096];
        await connection.ReadAsync(Size - 4096, buffer);
        connection.IsClosed.Should().BeFalse("local refusals do not hurt the connection");
    }

    [Fact]
    public async Task ServerKilled_FailsPendingWritesAsOutcomeUnknown_AndTheConnectionOnce()
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", Size);
        await using var server = await QemuNbdServer.StartAsync(image);
        var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server));
        var data = Endpoints.RandomBytes(4 << 20, 4);
        await connection.WriteAsync(0, data);

        server.Kill();
        var writes = Enumerable.Range(0, 8).Select(i => connection.WriteAsync(i * (4L << 20), data).AsTask()).ToList();
        var completion = await connection.Completion.WaitAsync(Endpoints.Bound);
        completion.Should().BeOfType<NbdConnectionException>();
        foreach (var write in writes)
        {
            var failure = await FluentActions.Awaiting(() => write.WaitAsync(Endpoints.Bound)).Should().ThrowAsync<NbdException>();
            failure.Which.Should().Match<NbdException>(e => e is NbdOutcomeUnknownException || e is NbdConnectionException);
        }
        connection.IsClosed.Should().BeTrue();
        await FluentActions.Awaiting(() => connection.ReadAsync(0, new byte[512]).AsTask()).Should().ThrowAsync<NbdConnectionException>();
        await connection.DisposeAsync();
    }
}
