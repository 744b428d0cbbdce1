using System.Text.Json;

namespace ImageioProxy.Client;

/// <summary>What OPTIONS /images/{ticket} says about the server and the ticket.</summary>
public sealed record ImageioServerInfo
{
    /// <summary>"checksum", "extents", "flush", "zero" as the server lists them.</summary>
    public required IReadOnlyList<string> Features { get; init; }

    /// <summary>Parallel readers the server allows; 1 when it does not say (imageio's rule).</summary>
    public int MaxReaders { get; init; } = 1;

    /// <summary>Parallel writers the server allows; 1 when it does not say (imageio's rule).</summary>
    public int MaxWriters { get; init; } = 1;

    /// <summary>The server's local unix socket; an abstract socket starts with '\0'.</summary>
    public string? UnixSocket { get; init; }

    /// <summary>The methods of the Allow header (OPTIONS,GET,PUT,PATCH for a read-write ticket), empty when absent.</summary>
    public IReadOnlyList<string> AllowedMethods { get; init; } = [];

    public bool CanZero => Features.Contains("zero");
    public bool CanFlush => Features.Contains("flush");
    public bool CanExtents => Features.Contains("extents");
    public bool CanChecksum => Features.Contains("checksum");

    /// <summary>False only when the server says which methods it allows and PUT is not one of them.</summary>
    public bool AllowsWrite => AllowedMethods.Count == 0 || AllowedMethods.Contains("PUT", StringComparer.OrdinalIgnoreCase);

    internal static ImageioServerInfo Parse(string json, IEnumerable<string> allow)
    {
        using var document = JsonDocument.Parse(json);
        var root = document.RootElement;
        if (root.ValueKind != JsonValueKind.Object)
        {
            throw new JsonException("OPTIONS reply is not a JSON object");
        }
        var features = root.TryGetProperty("features", out var f) && f.ValueKind == JsonValueKind.Array
            ? f.EnumerateArray().Where(e => e.ValueKind == JsonValueKind.String).Select(e => e.GetString()!).ToList()
            : [];
        return new ImageioServerInfo
        {
            Features = features,
            MaxReaders = PositiveOrOne(root, "max_readers"),
            MaxWriters = PositiveOrOne(root, "max_writers"),
            UnixSocket = root.TryGetProperty("unix_socket", out var s) && s.ValueKind == JsonValueKind.String ? s.GetString() : null,
            AllowedMethods = [.. allow.SelectMany(a => a.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))],
        };
    }

    private static int PositiveOrOne(JsonElement root, string name) =>
        root.TryGetProperty(name, out var value) && value.TryGetInt32(out var n) && n > 0 ? n : 1;
}

/// <summary>One extent of GET /images/{ticket}/extents (context=zero).</summary>
public readonly record struct ImageExtent(long Start, long Length, bool Zero, bool Hole = false)
{
    public long End => Start + Length;
}

/// <summary>The reply of GET /images/{ticket}/checksum, and what the client computes locally.</summary>
public sealed record ImageChecksum(string Algorithm, int BlockSize, string Checksum);
