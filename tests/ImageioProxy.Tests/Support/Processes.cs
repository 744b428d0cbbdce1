using System.Text;

namespace ImageioProxy.Tests.Support;

public sealed record ProcessResult(int ExitCode, string Stdout, string Stderr);

/// <summary>The outcome of one curl run: the final response (100 Continue skipped).</summary>
public sealed record CurlResult(int Status, IReadOnlyDictionary<string, string> Headers, byte[] Body, string Stderr)
{
    public string Text => Encoding.UTF8.GetString(Body);

    public string? Header(string name) => Headers.TryGetValue(name.ToLowerInvariant(), out var value) ? value : null;
}

/// <summary>Process helpers of these tests, on top of TestSupport's <see cref="global::TestSupport.ExternalProcess"/>.</summary>
public static class Processes
{
    public static async Task<ProcessResult> RunAsync(string tool, IEnumerable<string> args, IDictionary<string, string>? environment = null,
        CancellationToken cancellationToken = default)
    {
        var options = new global::TestSupport.ExternalProcessOptions
        {
            Environment = environment?.ToDictionary(e => e.Key, e => (string?)e.Value),
        };
        var result = await global::TestSupport.ExternalProcess.RunAsync(tool, args, TimeSpan.FromMinutes(5), options, cancellationToken);
        return new ProcessResult(result.ExitCode, result.StandardOutput, result.StandardError);
    }

    public static async Task<ProcessResult> CheckAsync(string tool, params string[] args)
    {
        var result = await RunAsync(tool, args);
        if (result.ExitCode != 0)
        {
            throw new InvalidOperationException($"{tool} {string.Join(' ', args)} failed ({result.ExitCode}): {result.Stderr}");
        }
        return result;
    }

    /// <summary>Runs curl -sS with the given arguments and returns the final response.</summary>
    public static async Task<CurlResult> CurlAsync(string directory, params string[] args)
    {
        var id = Guid.NewGuid().ToString("N");
        var bodyFile = Path.Combine(directory, $"curl-{id}.body");
        var headerFile = Path.Combine(directory, $"curl-{id}.headers");
        try
        {
            var result = await RunAsync("curl", ["-sS", "-o", bodyFile, "-D", headerFile, "-w", "%{http_code}", .. args]);
            var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
            if (File.Exists(headerFile))
            {
                // Several blocks when 100 Continue came first: keep the last one.
                var blocks = File.ReadAllText(headerFile).Replace("\r\n", "\n", StringComparison.Ordinal)
                    .Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
                var last = blocks.LastOrDefault(b => b.StartsWith("HTTP/", StringComparison.Ordinal)) ?? "";
                foreach (var line in last.Split('\n').Skip(1))
                {
                    var colon = line.IndexOf(':', StringComparison.Ordinal);
                    if (colon > 0)
                    {
                        headers[line[..colon].Trim().ToLowerInvariant()] = line[(colon + 1)..].Trim();
                    }
                }
            }
            var body = File.Exists(bodyFile) ? await File.ReadAllBytesAsync(bodyFile) : [];
            var status = int.TryParse(result.Stdout.Trim(), out var code) ? code : 0;
            return new CurlResult(status, headers, body, result.Stderr);
        }
        finally
        {
            File.Delete(bodyFile);
            File.Delete(headerFile);
        }
    }
}
