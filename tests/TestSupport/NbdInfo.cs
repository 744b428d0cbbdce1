using System.Globalization;
using System.Text.Json;

namespace TestSupport;

/// <summary>Runs libnbd's nbdinfo: an independent client to check what a server really exports.</summary>
public static class NbdInfo
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    /// <summary><c>nbdinfo --json URI</c>, parsed. URIs may carry tls-certificates=DIR / tls-psk-file=FILE.</summary>
    public static async Task<JsonDocument> GetJsonAsync(string uri, CancellationToken cancellationToken = default)
    {
        var result = (await RunAsync(["--json", uri], cancellationToken).ConfigureAwait(false)).EnsureSuccess();
        return JsonDocument.Parse(result.StandardOutput);
    }

    /// <summary><c>nbdinfo --size URI</c>.</summary>
    public static async Task<long> GetSizeAsync(string uri, CancellationToken cancellationToken = default)
    {
        var result = (await RunAsync(["--size", uri], cancellationToken).ConfigureAwait(false)).EnsureSuccess();
        return long.Parse(result.StandardOutput.Trim(), CultureInfo.InvariantCulture);
    }

    /// <summary>Runs nbdinfo with any arguments; a non-zero exit code is returned, not thrown.</summary>
    public static Task<ProcessResult> RunAsync(IEnumerable<string> arguments, CancellationToken cancellationToken = default)
        => ExternalProcess.RunAsync(Tool.Require("nbdinfo"), arguments, Timeout, cancellationToken: cancellationToken);
}
