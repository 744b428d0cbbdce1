using System.Buffers;
using ImageioProxy.Hosting;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace ImageioProxy.Tests.Hosting;

public class KestrelTuningTests
{
    private static ProxyServer Create(Dictionary<string, string?> settings) =>
        ProxyServer.Create([], config => config.AddInMemoryCollection(new Dictionary<string, string?>(settings)
        {
            ["Remote:Host"] = "127.0.0.1",
            ["Remote:Port"] = "0",
            ["Tls:Enable"] = "false",
            ["Local:Enable"] = "false",
            ["Control:Enable"] = "false",
        }));

    [Fact]
    public async Task By_default_receives_are_inline_and_do_not_wait_for_data_before_taking_a_block()
    {
        await using var server = Create([]);

        var socket = server.Services.GetRequiredService<IOptions<SocketTransportOptions>>().Value;

        socket.UnsafePreferInlineScheduling.Should().BeTrue();
        socket.WaitForDataBeforeAllocatingBuffer.Should().BeFalse("the zero-byte receive per wake-up is what this setting saves");
        server.Services.GetRequiredService<IMemoryPoolFactory<byte>>().Should().BeOfType<LargeBlockMemoryPoolFactory>()
            .Which.BlockSize.Should().Be(64 * 1024);
    }

    [Fact]
    public async Task Http_settings_reach_Kestrels_socket_transport()
    {
        await using var server = Create(new()
        {
            ["Http:InlineScheduling"] = "false",
            ["Http:WaitForDataBeforeAllocatingBuffer"] = "true",
            ["Http:PoolBlockSize"] = "131072",
        });

        var socket = server.Services.GetRequiredService<IOptions<SocketTransportOptions>>().Value;

        socket.UnsafePreferInlineScheduling.Should().BeFalse();
        socket.WaitForDataBeforeAllocatingBuffer.Should().BeTrue();
        server.Services.GetRequiredService<IMemoryPoolFactory<byte>>().Should().BeOfType<LargeBlockMemoryPoolFactory>()
            .Which.BlockSize.Should().Be(128 * 1024);
    }

    [Fact]
    public void The_large_block_pool_reuses_returned_blocks_and_keeps_at_most_its_limit()
    {
        using var pool = new LargeBlockMemoryPool(1024 * 1024);
        var first = pool.Rent();
        var memory = first.Memory;
        memory.Length.Should().Be(1024 * 1024);
        first.Dispose();

        using (var again = pool.Rent(1))
        {
            again.Memory.Equals(memory).Should().BeTrue("a returned block is handed out again");
        }

        var burst = Enumerable.Range(0, pool.MaxRetainedBlocks + 10).Select(_ => pool.Rent()).ToList();
        burst.ForEach(b => b.Dispose());
        var kept = Enumerable.Range(0, pool.MaxRetainedBlocks + 10).Select(_ => pool.Rent()).ToList();
        kept.Select(b => b.Memory).Count(m => burst.Any(b => b.Memory.Equals(m))).Should().Be(pool.MaxRetainedBlocks,
            "blocks beyond the limit go to the GC instead of being kept for ever");
        kept.ForEach(b => b.Dispose());
    }

    [Fact]
    public void The_large_block_pool_refuses_a_request_larger_than_a_block()
    {
        using var pool = new LargeBlockMemoryPool(64 * 1024);

        var act = () => pool.Rent(64 * 1024 + 1);

        act.Should().Throw<ArgumentOutOfRangeException>();
    }
}
