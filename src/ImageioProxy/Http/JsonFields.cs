using System.Globalization;
using System.Text.Json;

namespace ImageioProxy.Http;

/// <summary>Strict field validation with imageio's error texts (_internal/validate.py, imageio-api.md §2).
/// Types are strict: "1" is not an integer, 1 is not a boolean, 1.0 is not an integer.</summary>
internal static class JsonFields
{
    public static long Integer(JsonElement message, string name, long minValue, long? defaultValue = null)
    {
        if (!message.TryGetProperty(name, out var value))
        {
            return defaultValue ?? throw HttpErrorException.BadRequest($"Missing required value for '{name}'");
        }
        if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt64(out var number))
        {
            throw HttpErrorException.BadRequest($"Integer required {Repr(value)}");
        }
        if (number < minValue)
        {
            throw HttpErrorException.BadRequest($"Invalid value {number} < {minValue}");
        }
        return number;
    }

    public static bool Boolean(JsonElement message, string name, bool defaultValue)
    {
        if (!message.TryGetProperty(name, out var value))
        {
            return defaultValue;
        }
        return value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw HttpErrorException.BadRequest($"Boolean required {Repr(value)}"),
        };
    }

    /// <summary>One of <paramref name="allowed"/> (sorted in the error, as Python's sorted()).</summary>
    public static string Enum(string? value, string name, IReadOnlyCollection<string> allowed, string? defaultValue)
    {
        if (value is null)
        {
            return defaultValue ?? throw HttpErrorException.BadRequest($"Missing required value for {name}");
        }
        if (!allowed.Contains(value))
        {
            var expected = string.Join(", ", allowed.Order(StringComparer.Ordinal).Select(v => $"'{v}'"));
            throw HttpErrorException.BadRequest($"Unsupported value {PyString(value)} for '{name}', expecting one of [{expected}]");
        }
        return value;
    }

    /// <summary>A JSON value shown roughly as Python's repr() shows it, for error messages.</summary>
    public static string Repr(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.String => PyString(value.GetString()!),
        JsonValueKind.True => "True",
        JsonValueKind.False => "False",
        JsonValueKind.Null => "None",
        _ => Truncate(value.GetRawText()),
    };

    public static string PyString(string value) => string.Create(CultureInfo.InvariantCulture, $"'{Truncate(value)}'");

    private static string Truncate(string text) => text.Length <= 100 ? text : text[..100] + "...";
}
