using System.Text.Json;
using NbdClient;

namespace ImageioProxy.Tickets;

/// <summary>The validated JSON of a ticket (imageio-api.md §5.1). Types are strict like imageio's
/// isinstance checks, and stricter where imageio accepts nonsense: booleans are not integers, sizes and
/// timeouts cannot be negative, ops must be "read" or "write", and only nbd URLs are served.</summary>
public sealed record TicketSpec
{
    public required string Uuid { get; init; }
    public required long Size { get; init; }
    public required IReadOnlyList<string> Ops { get; init; }
    public required long Timeout { get; init; }
    public required string Url { get; init; }
    public required NbdEndpoint Endpoint { get; init; }
    public required long InactivityTimeout { get; init; }
    public required string TransferId { get; init; }
    public string? Filename { get; init; }
    public bool Sparse { get; init; }
    public bool Dirty { get; init; }

    /// <summary>"write" implies "read" (imageio Ticket.may).</summary>
    public bool MayRead => Ops.Contains("read") || Ops.Contains("write");

    public bool MayWrite => Ops.Contains("write");

    /// <summary>Parses a ticket; <paramref name="error"/> is imageio's reason text (without the
    /// "Invalid ticket: " prefix the control API adds).</summary>
    public static bool TryParse(JsonElement json, long defaultInactivityTimeout, out TicketSpec spec, out string error)
    {
        spec = null!;
        try
        {
            spec = Parse(json, defaultInactivityTimeout);
            error = "";
            return true;
        }
        catch (FormatException e)
        {
            error = e.Message;
            return false;
        }
    }

    private static TicketSpec Parse(JsonElement json, long defaultInactivityTimeout)
    {
        if (json.ValueKind != JsonValueKind.Object)
        {
            throw new FormatException($"Invalid ticket: {Http.JsonFields.Repr(json)}, expecting a dict");
        }

        var uuid = RequiredString(json, "uuid");
        if (uuid.Length == 0)
        {
            throw Invalid("uuid", json.GetProperty("uuid"), "must not be empty");
        }
        var size = NonNegative(json, "size", Required(json, "size", JsonValueKind.Number));
        var ops = ParseOps(json);
        var timeout = NonNegative(json, "timeout", Required(json, "timeout", JsonValueKind.Number));
        var url = RequiredString(json, "url");
        if (!NbdUrl.TryParse(url, out var endpoint, out var urlError))
        {
            throw Invalid("url", json.GetProperty("url"), urlError);
        }
        var inactivity = json.TryGetProperty("inactivity_timeout", out _)
            ? NonNegative(json, "inactivity_timeout", Required(json, "inactivity_timeout", JsonValueKind.Number))
            : defaultInactivityTimeout;
        // Engines before 4.2.7 sent no transfer id; imageio derives one from the uuid. We use a hash
        // prefix instead, because the uuid is a secret that would otherwise end up in logs.
        var transferId = OptionalString(json, "transfer_id") ?? $"(ticket/{TicketIds.Fingerprint(uuid)})";

        return new TicketSpec
        {
            Uuid = uuid,
            Size = size,
            Ops = ops,
            Timeout = timeout,
            Url = url,
            Endpoint = endpoint,
            InactivityTimeout = inactivity,
            TransferId = transferId,
            Filename = OptionalString(json, "filename"),
            Sparse = OptionalBoolean(json, "sparse"),
            Dirty = OptionalBoolean(json, "dirty"),
        };
    }

    private static JsonElement Required(JsonElement json, string key, JsonValueKind kind)
    {
        if (!json.TryGetProperty(key, out var value))
        {
            throw new FormatException($"Required ticket parameter is missing: {key}");
        }
        if (value.ValueKind != kind)
        {
            throw Invalid(key, value, $"expecting a {PythonType(kind)} value");
        }
        return value;
    }

    private static string RequiredString(JsonElement json, string key) => Required(json, key, JsonValueKind.String).GetString()!;

    private static long NonNegative(JsonElement json, string key, JsonElement value)
    {
        if (!value.TryGetInt64(out var number))
        {
            throw Invalid(key, value, "expecting a <class 'int'> value");
        }
        if (number < 0)
        {
            throw Invalid(key, value, "must be >= 0");
        }
        return number;
    }

    private static string? OptionalString(JsonElement json, string key)
        => json.TryGetProperty(key, out _) ? RequiredString(json, key) : null;

    private static bool OptionalBoolean(JsonElement json, string key)
    {
        if (!json.TryGetProperty(key, out var value))
        {
            return false;
        }
        return value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Invalid(key, value, "expecting a <class 'bool'> value"),
        };
    }

    private static string[] ParseOps(JsonElement json)
    {
        var value = Required(json, "ops", JsonValueKind.Array);
        var ops = new List<string>();
        foreach (var item in value.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.String || item.GetString() is not ("read" or "write"))
            {
                throw Invalid("ops", value, "expecting a list of 'read' and 'write'");
            }
            ops.Add(item.GetString()!);
        }
        return [.. ops];
    }

    private static FormatException Invalid(string key, JsonElement value, string reason)
        => new($"Invalid value for '{key}': {Http.JsonFields.Repr(value)}: {reason}");

    private static string PythonType(JsonValueKind kind) => kind switch
    {
        JsonValueKind.Number => "<class 'int'>",
        JsonValueKind.String => "<class 'str'>",
        JsonValueKind.Array => "<class 'list'>",
        _ => kind.ToString(),
    };
}

/// <summary>Ticket ids are bearer secrets: never log them (imageio issue #26).</summary>
public static class TicketIds
{
    /// <summary>A short, stable, non-reversible tag of a ticket id for logs and generated transfer ids.</summary>
    public static string Fingerprint(string ticketId)
    {
        var hash = System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(ticketId));
        return Convert.ToHexStringLower(hash.AsSpan(0, 6));
    }
}
