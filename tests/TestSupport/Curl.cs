using System.Globalization;
using System.Text;

namespace TestSupport;

/// <summary>What curl got: exit code, HTTP status (0 if none), the last response's headers and the body.</summary>
public sealed record CurlResult(string CommandLine, int ExitCode, int StatusCode, IReadOnlyList<KeyValuePair<string, string>> Headers, byte[] Body, string StandardError)
{
    public string BodyText => Encoding.UTF8.GetString(Body);

    /// <summary>First value of a header (case-insensitive name), or null.</summary>
    public string? Header(string name)
        => Headers.FirstOrDefault(h => string.Equals(h.Key, name, StringComparison.OrdinalIgnoreCase)).Value;

    public override string ToString()
        => $"{CommandLine}\n  exit code {ExitCode}, HTTP {StatusCode}\n  headers: {string.Join("; ", Headers.Select(h => $"{h.Key}: {h.Value}"))}\n"
            + $"  body ({Body.Length} bytes): {(Body.Length <= 2000 ? BodyText : BodyText[..2000] + " [...]")}\n  stderr: {StandardError.Trim()}";
}

/// <summary>Runs the real curl (the client imageio users run) and captures status, headers and body.</summary>
public static class Curl
{
    /// <summary>
    /// Runs <c>curl --silent --show-error --max-time T -D HEADERS -o BODY -w '%{http_code}' ARGS...</c>.
    /// <paramref name="arguments"/> holds the URL and any request options (-X PUT, --data-binary @FILE,
    /// -H ..., --unix-socket PATH, -k, --cacert ...); do not pass -o, -D or -w. A curl failure (exit code
    /// != 0, e.g. 7 = cannot connect, 18 = short body, 28 = timeout) is returned, not thrown.
    /// </summary>
    public static async Task<CurlResult> RunAsync(IEnumerable<string> arguments, TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        var limit = timeout ?? TimeSpan.FromSeconds(60);
        using var directory = TempDirectory.Create("curl");
        var headerFile = directory.Combine("headers");
        var bodyFile = directory.Combine("body");
        List<string> args =
        [
            "--silent", "--show-error",
            "--max-time", limit.TotalSeconds.ToString("0.###", CultureInfo.InvariantCulture),
            "--dump-header", headerFile,
            "--output", bodyFile,
            "--write-out", "%{http_code}",
        ];
        args.AddRange(arguments);

        // curl's own --max-time fires first; the process timeout is a backstop.
        var result = await ExternalProcess.RunAsync(Tool.Require("curl"), args, limit + TimeSpan.FromSeconds(10), cancellationToken: cancellationToken).ConfigureAwait(false);
        var status = int.TryParse(result.StandardOutput.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var code) ? code : 0;
        var headers = File.Exists(headerFile) ? ParseHeaders(await File.ReadAllTextAsync(headerFile, cancellationToken).ConfigureAwait(false)) : [];
        var body = File.Exists(bodyFile) ? await File.ReadAllBytesAsync(bodyFile, cancellationToken).ConfigureAwait(false) : [];
        return new CurlResult(result.CommandLine, result.ExitCode, status, headers, body, result.StandardError);
    }

    /// <summary>Convenience for <c>curl URL</c> (GET).</summary>
    public static Task<CurlResult> GetAsync(string url, TimeSpan? timeout = null, CancellationToken cancellationToken = default)
        => RunAsync([url], timeout, cancellationToken);

    /// <summary>Headers of the last response in a --dump-header file (which also holds 100 Continue and
    /// redirect responses, each ending with an empty line).</summary>
    internal static List<KeyValuePair<string, string>> ParseHeaders(string dump)
    {
        var blocks = dump.Replace("\r\n", "\n", StringComparison.Ordinal)
            .Split("\n\n", StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var headers = new List<KeyValuePair<string, string>>();
        if (blocks.Length == 0)
        {
            return headers;
        }

        foreach (var line in blocks[^1].Split('\n').Skip(1))
        {
            var colon = line.IndexOf(':', StringComparison.Ordinal);
            if (colon > 0)
            {
                headers.Add(new(line[..colon].Trim(), line[(colon + 1)..].Trim()));
            }
        }

        return headers;
    }
}
