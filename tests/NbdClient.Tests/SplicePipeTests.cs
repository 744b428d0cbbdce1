using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using NbdClient.Tests.Integration;
using TestSupport;

namespace NbdClient.Tests;

/// <summary>SplicePipe on real sockets, and NbdPool writes whose payload is a pipe, into real qemu-nbd.</summary>
public sealed partial class SplicePipeTests
{
    private const int MiB = 1024 * 1024;

    [Fact]
    public void A_pipe_is_granted_the_size_asked_for()
    {
        using var pipe = SplicePipe.TryCreate(MiB);

        pipe.Should().NotBeNull("this suite runs on Linux x64/arm64");
        pipe!.Capacity.Should().Be(MiB);
        pipe.Length.Should().Be(0);
    }

    [Fact]
    public async Task SpliceFrom_takes_at_most_what_is_asked_then_reports_would_block_then_end_of_stream()
    {
        var (client, server) = await ConnectedPairAsync();
        using (client)
        using (server)
        {
            using var pipe = SplicePipe.TryCreate(MiB)!;
            var sent = Pattern(300_000, 1);
            var sending = client.SendAsync(sent);
            await WaitAvailableAsync(server, 100_000);

            pipe.SpliceFrom(server, 100_000).Should().Be(100_000);
            await FillAsync(pipe, server, sent.Length);
            await sending;
            pipe.SpliceFrom(server, MiB).Should().Be(SplicePipe.WouldBlock, "the socket is empty and still open");
            client.Shutdown(SocketShutdown.Send);
            await Task.Delay(50);
            pipe.SpliceFrom(server, MiB).Should().Be(0, "the peer closed its side");

            pipe.Length.Should().Be(sent.Length);
            ReadAll(pipe).Should().Equal(sent);
        }
    }

    [Fact]
    public async Task MoveTo_moves_the_first_bytes_and_Write_appends()
    {
        var (client, server) = await ConnectedPairAsync();
        using (client)
        using (server)
        {
            using var first = SplicePipe.TryCreate(MiB)!;
            using var second = SplicePipe.TryCreate(MiB)!;
            var head = Pattern(4096 + 17, 2);
            first.Write(head);
            var sent = Pattern(200_000, 3);
            await client.SendAsync(sent);
            await FillAsync(first, server, head.Length + sent.Length);

            first.MoveTo(second, 65_536 + 3);

            second.Length.Should().Be(65_536 + 3);
            first.Length.Should().Be(head.Length + sent.Length - 65_539);
            var all = head.Concat(sent).ToArray();
            ReadAll(second).Should().Equal(all[..65_539]);
            ReadAll(first).Should().Equal(all[65_539..]);
            FluentActions.Invoking(() => first.MoveTo(second, 1)).Should().Throw<ArgumentOutOfRangeException>("the pipe is empty");
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Pool_writes_a_pipe_as_one_request_that_lands_byte_exact(bool zeroCopy)
    {
        using var dir = TempDirectory.Create();
        var image = dir.Combine("disk.raw");
        await QemuImg.CreateAsync(image, "raw", 8 * MiB);
        await using var server = await QemuNbdServer.StartAsync(image);
        await using var pool = await NbdPool.ConnectAsync(Endpoints.Of(server),
            new NbdPoolOptions { Connection = new NbdClientOptions { ZeroCopyWrites = zeroCopy } });
        var (client, socket) = await ConnectedPairAsync();
        using (client)
        using (socket)
        {
            using var pipe = SplicePipe.TryCreate(MiB)!;
            var data = Pattern(MiB, 4);
            var sending = client.SendAsync(data);
            await FillAsync(pipe, socket, data.Length);
            await sending;

            await pool.WriteAsync(3 * MiB, pipe);

            pipe.Length.Should().Be(0, "the whole payload went out");
            var back = new byte[MiB];
            await pool.ReadAsync(3 * MiB, back);
            back.Should().Equal(data);
        }
    }

    [Fact]
    public async Task Pool_sends_a_pipe_larger_than_one_request_as_parts_in_order_on_one_connection()
    {
        await using var server = await NbdkitServer.StartAsync(["memory", "16M"], new NbdkitOptions { Filters = ["log"] });
        await using var pool = await NbdPool.ConnectAsync(Endpoints.Of(server), new NbdPoolOptions { MaxRequestSize = 64 * 1024 });
        using var pipe = SplicePipe.TryCreate(MiB)!;
        var data = Pattern(4 * 64 * 1024 + 4096, 7);
        pipe.Write(data);

        await pool.WriteAsync(MiB, pipe).AsTask().WaitAsync(Endpoints.Bound);

        pipe.Length.Should().Be(0);
        var back = new byte[data.Length];
        await pool.ReadAsync(MiB, back);
        back.Should().Equal(data, "each part took the pipe's next bytes");
        var writes = (await server.ReadLogLinesAsync())
            .Select(line => WriteLine().Match(line))
            .Where(m => m.Success)
            .Select(m => (Connection: m.Groups[1].Value, Offset: Convert.ToInt64(m.Groups[2].Value, 16), Count: Convert.ToInt32(m.Groups[3].Value, 16)))
            // nbdkit's worker threads log requests of one connection in the order they pick them up, which
            // need not be the wire's; the read-back above shows the wire order (each part took the next bytes).
            .OrderBy(w => w.Offset)
            .ToList();
        writes.Select(w => w.Count).Should().Equal(65536, 65536, 65536, 65536, 4096);
        writes.Select(w => w.Offset).Should().Equal(MiB, MiB + 65536, MiB + 2 * 65536, MiB + 3 * 65536, MiB + 4 * 65536);
        writes.Select(w => w.Connection).Distinct().Should().ContainSingle("the parts of one pipe go out back to back on one connection");
    }

    [Fact]
    public async Task Cancelling_a_write_cut_into_parts_ends_it_and_leaves_the_pool_usable()
    {
        // One request in flight per connection: the first part waits at the paused server, the others for a slot.
        await using var server = await NbdkitServer.StartAsync(["memory", "16M"], new NbdkitOptions { Filters = ["pause"] });
        await using var pool = await NbdPool.ConnectAsync(Endpoints.Of(server),
            new NbdPoolOptions { MaxRequestSize = 64 * 1024, MaxConnections = 1, Connection = new NbdClientOptions { MaxInFlight = 1 } });
        using var pipe = SplicePipe.TryCreate(MiB)!;
        pipe.Write(Pattern(4 * 64 * 1024, 8));
        await Endpoints.CancelWhilePausedAsync(server, cancel => pool.WriteAsync(0, pipe, cancellationToken: cancel).AsTask());
        pipe.Length.Should().Be(3 * 64 * 1024, "the parts after the first were never sent");

        // The first part was on the wire: its reply is read and dropped, and the pool goes on.
        var data = Pattern(4096, 9);
        await pool.WriteAsync(MiB, data).AsTask().WaitAsync(Endpoints.Bound);
        await pool.FlushAsync().AsTask().WaitAsync(Endpoints.Bound);
        var back = new byte[data.Length];
        await pool.ReadAsync(MiB, back);
        back.Should().Equal(data);
        pool.InFlight.Should().Be(0);
    }

    [GeneratedRegex(@"connection=(\d+) Write id=\d+ offset=0x([0-9a-f]+) count=0x([0-9a-f]+)")]
    private static partial Regex WriteLine();

    private static async Task<(Socket Client, Socket Server)> ConnectedPairAsync()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        var accept = listener.AcceptAsync();
        await client.ConnectAsync(listener.LocalEndPoint!);
        return (client, await accept);
    }

    private static async Task WaitAvailableAsync(Socket socket, int bytes)
    {
        for (var i = 0; i < 500 && socket.Available < bytes; i++)
            await Task.Delay(10);
        socket.Available.Should().BeGreaterThanOrEqualTo(bytes);
    }

    /// <summary>Splices until the pipe holds <paramref name="length"/> bytes, waiting for data as the proxy does.</summary>
    private static async Task FillAsync(SplicePipe pipe, Socket socket, int length)
    {
        while (pipe.Length < length)
        {
            var moved = pipe.SpliceFrom(socket, length - pipe.Length);
            moved.Should().NotBe(0, "the peer is still sending");
            if (moved == SplicePipe.WouldBlock)
                await socket.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None).AsTask().WaitAsync(Endpoints.Bound);
        }
    }

    private static byte[] ReadAll(SplicePipe pipe)
    {
        var result = new byte[pipe.Length];
        var done = 0;
        while (done < result.Length)
        {
            var got = pipe.Read(result.AsSpan(done));
            got.Should().BePositive();
            done += got;
        }
        pipe.Length.Should().Be(0);
        return result;
    }

    private static byte[] Pattern(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }
}
