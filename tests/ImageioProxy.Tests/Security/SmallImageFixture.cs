using System.Security.Cryptography;
using ImageioProxy.Tests.Support;

namespace ImageioProxy.Tests.Security;

/// <summary>A 1 MiB raw image filled with random bytes, so a write or zero that should have been
/// refused changes its hash. Small, so hashing it before and after every request is cheap.</summary>
public class SmallImageFixture : ProxyFixture, IAsyncLifetime
{
    public const long Size = 1024 * 1024;

    public SmallImageFixture() : this(new Dictionary<string, string?>()) { }

    protected SmallImageFixture(IReadOnlyDictionary<string, string?> settings) : base("raw", Size, settings) { }

    public new async Task InitializeAsync()
    {
        await base.InitializeAsync();
        var id = await AddTicketAsync();
        var content = new byte[Size];
        new Random(4).NextBytes(content);
        using var put = await Data.PutAsync($"/images/{id}", new ByteArrayContent(content));
        put.EnsureSuccessStatusCode();
        await RemoveTicketAsync(id);
    }

    /// <summary>SHA-256 of the image as qemu-nbd serves it (not through the proxy).</summary>
    public async Task<string> ImageHashAsync() => Convert.ToHexStringLower(SHA256.HashData(await ReadExportAsync()));

    /// <summary>Waits (bounded) until the ticket has no connection and no operation, then checks that
    /// every in-flight byte it took came back: no pooled buffer or budget leaked.</summary>
    public async Task AssertQuiescentAsync(string ticketId)
    {
        var ticket = Server.Tickets.Find(ticketId) ?? throw new InvalidOperationException("the ticket is gone");
        for (var i = 0; i < 500 && (ticket.ConnectionCount > 0 || ticket.IsActive || ticket.Budget.InUse > 0); i++)
        {
            await Task.Delay(20);
        }
        ticket.ConnectionCount.Should().Be(0, "every connection of the ticket was closed");
        ticket.IsActive.Should().BeFalse("no operation may outlive its request");
        ticket.Budget.InUse.Should().Be(0, "every transfer buffer of the ticket was returned");
    }
}
