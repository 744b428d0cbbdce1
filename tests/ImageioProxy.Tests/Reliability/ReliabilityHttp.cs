using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;

namespace ImageioProxy.Tests.Reliability;

/// <summary>One HTTP answer, read whole.</summary>
public sealed record Reply(int Status, byte[] Body, string? RetryAfter)
{
    public string Text => Encoding.UTF8.GetString(Body);

    public override string ToString() => $"{Status} {Text.TrimEnd()}";
}

/// <summary>The /images calls the reliability tests make, each bounded: a request that hangs fails the
/// test instead of hanging it.</summary>
public sealed class ReliabilityHttp(HttpClient client, Uri baseUri)
{
    /// <summary>Longest any single request may take, even against a faulty backend: the short test timeouts
    /// (2 s per NBD request, 3 connection attempts) plus a wide margin for a loaded machine.</summary>
    public static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    public string ImageUrl(string ticketId) => $"{baseUri.ToString().TrimEnd('/')}/images/{ticketId}";

    public Task<Reply> PutAsync(string ticketId, long offset, byte[] data, bool flush)
    {
        var content = new ByteArrayContent(data);
        content.Headers.ContentRange = new ContentRangeHeaderValue(offset, offset + data.Length - 1);
        return SendAsync(HttpMethod.Put, ImageUrl(ticketId) + (flush ? "?flush=y" : "?flush=n"), content);
    }

    public Task<Reply> GetAsync(string ticketId, long offset, long length)
        => SendAsync(HttpMethod.Get, ImageUrl(ticketId), range: new RangeHeaderValue(offset, offset + length - 1));

    public Task<Reply> ZeroAsync(string ticketId, long offset, long size, bool flush = false)
        => SendAsync(HttpMethod.Patch, ImageUrl(ticketId), JsonContent.Create(new { op = "zero", offset, size, flush }));

    public Task<Reply> FlushAsync(string ticketId)
        => SendAsync(HttpMethod.Patch, ImageUrl(ticketId), JsonContent.Create(new { op = "flush" }));

    public async Task<Reply> SendAsync(HttpMethod method, string url, HttpContent? content = null, RangeHeaderValue? range = null)
    {
        using var request = new HttpRequestMessage(method, url) { Content = content };
        request.Headers.Range = range;
        using var response = await client.SendAsync(request).WaitAsync(Bound);
        var body = await response.Content.ReadAsByteArrayAsync().WaitAsync(Bound);
        return new Reply((int)response.StatusCode, body, response.Headers.TryGetValues("Retry-After", out var values) ? values.First() : null);
    }

    /// <summary>"transferred" of GET /tickets/{id}: bytes acknowledged by the backend (single-op tickets).</summary>
    public static async Task<long> TransferredAsync(HttpClient control, string ticketId)
    {
        using var document = JsonDocument.Parse(await control.GetStringAsync($"/tickets/{ticketId}").WaitAsync(Bound));
        return document.RootElement.TryGetProperty("transferred", out var value) ? value.GetInt64() : 0;
    }

    /// <summary>"active" of GET /tickets/{id}: an operation is running.</summary>
    public static async Task<bool> ActiveAsync(HttpClient control, string ticketId)
    {
        using var document = JsonDocument.Parse(await control.GetStringAsync($"/tickets/{ticketId}").WaitAsync(Bound));
        return document.RootElement.GetProperty("active").GetBoolean();
    }

    public static byte[] RandomBytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }
}
