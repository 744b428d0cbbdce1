using System.Globalization;

namespace ImageioProxy.Hosting;

/// <summary>probe URL [TIMEOUT_SECONDS]: GET URL and exit 0 on a 2xx answer, 1 otherwise. Runtime images
/// ship no curl or wget, so the container's exec-form HEALTHCHECK runs the service binary itself
/// (ecosystem.md §2.2).</summary>
public static class ProbeCommand
{
    private const string Usage = "usage: ImageioProxy probe URL [TIMEOUT_SECONDS]   e.g. probe http://127.0.0.1:54323/health/ready";

    public static async Task<int> RunAsync(string[] args)
    {
        if (args.Length is < 1 or > 2 || !Uri.TryCreate(args[0], UriKind.Absolute, out var url) || url.Scheme is not ("http" or "https"))
        {
            await Console.Error.WriteLineAsync(Usage);
            return 2;
        }
        var seconds = 5;
        if (args.Length == 2 && (!int.TryParse(args[1], NumberStyles.None, CultureInfo.InvariantCulture, out seconds) || seconds < 1))
        {
            await Console.Error.WriteLineAsync(Usage);
            return 2;
        }
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(seconds));
        using var client = new HttpClient { Timeout = Timeout.InfiniteTimeSpan };
        try
        {
            using var response = await client.GetAsync(url, timeout.Token);
            var body = (await response.Content.ReadAsStringAsync(timeout.Token)).Trim();
            Console.WriteLine($"{(int)response.StatusCode} {body}");
            return response.IsSuccessStatusCode ? 0 : 1;
        }
        catch (Exception e) when (e is HttpRequestException or OperationCanceledException)
        {
            await Console.Error.WriteLineAsync($"probe {url}: {(e is OperationCanceledException ? $"no answer within {seconds} s" : e.Message)}");
            return 1;
        }
    }
}
