using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace ImageioProxy.Http;

/// <summary>A parsed <c>Range</c> request header with one byte range.</summary>
/// <param name="First">First byte (<c>bytes=A-B</c> and <c>bytes=A-</c>); null for a suffix range.</param>
/// <param name="Last">Last byte, inclusive (<c>bytes=A-B</c>); null when open-ended or a suffix range.</param>
/// <param name="SuffixLength">N of <c>bytes=-N</c> (the last N bytes), always &gt; 0; null otherwise.</param>
public readonly record struct RangeRequest(long? First, long? Last, long? SuffixLength)
{
    /// <summary>True for <c>bytes=-N</c>.</summary>
    public bool IsSuffix => SuffixLength is not null;

    /// <summary>The header value this range was parsed from, in canonical form (no leading zeros).</summary>
    public string ToHeaderValue() => SuffixLength is { } suffix
        ? $"bytes=-{suffix}"
        : $"bytes={First}-{Last}";
}

/// <summary>A parsed <c>Content-Range</c> header of a PUT (<c>bytes first-last/complete</c>).</summary>
/// <param name="First">First byte; the only value imageio uses (it is the write offset).</param>
/// <param name="Last">Last byte, inclusive; null for <c>*</c>.</param>
/// <param name="Complete">Size of the complete representation; null for <c>*</c>.</param>
public readonly record struct ContentRange(long First, long? Last, long? Complete)
{
    /// <summary>The header value in canonical form, e.g. <c>bytes 0-4095/*</c>.</summary>
    public string ToHeaderValue() =>
        $"bytes {First}-{(Last is { } last ? last.ToString(CultureInfo.InvariantCulture) : "*")}/{(Complete is { } complete ? complete.ToString(CultureInfo.InvariantCulture) : "*")}";
}

/// <summary>
/// Strict parsers for the Range and Content-Range headers, with imageio's syntax and error texts
/// (<c>ovirt_imageio/_internal/http.py</c> <c>Range.parse</c> and <c>ContentRange.parse</c>).
/// A header we cannot parse exactly must fail the request: silently ignoring a bad Content-Range
/// would write the body at offset 0 and corrupt the image.
/// </summary>
/// <remarks>
/// Deliberate differences from imageio, none of which a well-behaved client can observe:
/// <list type="bullet">
/// <item>Suffix ranges (<c>bytes=-N</c>) are supported; imageio answers 416. <c>bytes=-0</c> is
/// unsatisfiable (RFC 9110 §14.1.1), so it is rejected here.</item>
/// <item>Digits are ASCII only. Python's <c>\d</c> and <c>int()</c> also accept other Unicode digits
/// (<c>bytes=٠-٩</c> parses in imageio).</item>
/// <item>The value must end right after the last number. Python's <c>$</c> also matches before a
/// trailing <c>\n</c>.</item>
/// <item>Numbers beyond <see cref="long.MaxValue"/> are an error; Python has unbounded integers.</item>
/// </list>
/// Error texts quote the header like Python's <c>repr()</c> does, so they read exactly like imageio's.
/// </remarks>
public static partial class HttpRanges
{
    // imageio: r"bytes=(\d*)-(\d*)$" with re.match (anchored at the start).
    [GeneratedRegex(@"^bytes=([0-9]*)-([0-9]*)\z", RegexOptions.CultureInvariant)]
    private static partial Regex RangeSyntax();

    // imageio: r"bytes (\d+)-(\d+|\*)/(\d+|\*)$".
    [GeneratedRegex(@"^bytes ([0-9]+)-([0-9]+|\*)/([0-9]+|\*)\z", RegexOptions.CultureInvariant)]
    private static partial Regex ContentRangeSyntax();

    /// <summary>Parses <c>bytes=A-B</c>, <c>bytes=A-</c> or <c>bytes=-N</c>. On failure
    /// <paramref name="error"/> is the text for a 416 reply.</summary>
    public static bool TryParseRange(string value, out RangeRequest range, out string error)
    {
        ArgumentNullException.ThrowIfNull(value);
        range = default;
        var match = RangeSyntax().Match(value);
        if (!match.Success)
        {
            error = $"Cannot satisfy range {PythonRepr(value)}, invalid range or multiple ranges";
            return false;
        }

        var firstText = match.Groups[1].ValueSpan;
        var lastText = match.Groups[2].ValueSpan;

        if (firstText.IsEmpty)
        {
            if (lastText.IsEmpty)
            {
                error = $"Cannot satisfy range {PythonRepr(value)}, no first or last";
                return false;
            }

            if (!TryParseNumber(lastText, out var suffixLength))
            {
                error = $"Cannot satisfy range {PythonRepr(value)}, value too large";
                return false;
            }

            if (suffixLength == 0)
            {
                error = $"Cannot satisfy range {PythonRepr(value)}, suffix length is zero";
                return false;
            }

            range = new RangeRequest(null, null, suffixLength);
            error = "";
            return true;
        }

        if (!TryParseNumber(firstText, out var first))
        {
            error = $"Cannot satisfy range {PythonRepr(value)}, value too large";
            return false;
        }

        if (lastText.IsEmpty)
        {
            range = new RangeRequest(first, null, null);
            error = "";
            return true;
        }

        if (!TryParseNumber(lastText, out var last))
        {
            error = $"Cannot satisfy range {PythonRepr(value)}, value too large";
            return false;
        }

        if (first > last)
        {
            error = $"Cannot satisfy range {PythonRepr(value)}, first > last";
            return false;
        }

        range = new RangeRequest(first, last, null);
        error = "";
        return true;
    }

    /// <summary>Parses <c>bytes A-B/C</c>, <c>bytes A-B/*</c>, <c>bytes A-*/C</c> or <c>bytes A-*/*</c>.
    /// On failure <paramref name="error"/> is the text for a 400 reply.</summary>
    public static bool TryParseContentRange(string value, out ContentRange range, out string error)
    {
        ArgumentNullException.ThrowIfNull(value);
        range = default;
        var match = ContentRangeSyntax().Match(value);
        if (!match.Success)
        {
            error = $"Invalid Content-Range {PythonRepr(value)}";
            return false;
        }

        var lastText = match.Groups[2].ValueSpan;
        var completeText = match.Groups[3].ValueSpan;

        if (!TryParseNumber(match.Groups[1].ValueSpan, out var first))
        {
            error = $"Invalid Content-Range {PythonRepr(value)}, value too large";
            return false;
        }

        long? last = null;
        if (lastText is not "*")
        {
            if (!TryParseNumber(lastText, out var parsedLast))
            {
                error = $"Invalid Content-Range {PythonRepr(value)}, value too large";
                return false;
            }

            if (parsedLast < first)
            {
                error = $"Invalid Content-Range {PythonRepr(value)}, first > last";
                return false;
            }

            last = parsedLast;
        }

        long? complete = null;
        if (completeText is not "*")
        {
            if (!TryParseNumber(completeText, out var parsedComplete))
            {
                error = $"Invalid Content-Range {PythonRepr(value)}, value too large";
                return false;
            }

            if (last >= parsedComplete)
            {
                error = $"Invalid Content-Range {PythonRepr(value)}, last >= complete";
                return false;
            }

            complete = parsedComplete;
        }

        range = new ContentRange(first, last, complete);
        error = "";
        return true;
    }

    // The regex already guarantees ASCII digits only; NumberStyles.None then rejects signs, spaces and
    // separators, accepts leading zeros like Python's int(), and fails (not throws) on overflow.
    private static bool TryParseNumber(ReadOnlySpan<char> digits, out long value) =>
        long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out value);

    /// <summary>Quotes a string like Python 3's <c>repr(str)</c>, so error texts match imageio's
    /// <c>{!r}</c> formatting (single quotes unless the text has a single quote and no double quote).</summary>
    internal static string PythonRepr(string text)
    {
        var quote = text.Contains('\'', StringComparison.Ordinal) && !text.Contains('"', StringComparison.Ordinal) ? '"' : '\'';
        var builder = new StringBuilder(text.Length + 2);
        builder.Append(quote);
        for (var i = 0; i < text.Length; i++)
        {
            int codePoint = text[i];
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                codePoint = char.ConvertToUtf32(text[i], text[i + 1]);
                i++;
            }

            switch (codePoint)
            {
                case '\\': builder.Append(@"\\"); break;
                case '\n': builder.Append(@"\n"); break;
                case '\r': builder.Append(@"\r"); break;
                case '\t': builder.Append(@"\t"); break;
                case var c when c == quote: builder.Append('\\').Append(quote); break;
                case var c when !IsPythonPrintable(c):
                    // Python escapes by width: \xhh, \uhhhh, \Uhhhhhhhh.
                    builder.Append(c switch
                    {
                        < 0x100 => $"\\x{c:x2}",
                        < 0x10000 => $"\\u{c:x4}",
                        _ => $"\\U{c:x8}",
                    });
                    break;
                default: builder.Append(char.ConvertFromUtf32(codePoint)); break;
            }
        }

        return builder.Append(quote).ToString();
    }

    // str.isprintable(): everything except categories Cc, Cf, Cs, Co, Cn, Zl, Zp, and Zs other than ' '.
    private static bool IsPythonPrintable(int codePoint)
    {
        if (codePoint == ' ')
        {
            return true;
        }

        if (codePoint is >= 0xd800 and <= 0xdfff)
        {
            return false; // a lone surrogate
        }

        return CharUnicodeInfo.GetUnicodeCategory(codePoint) is not (UnicodeCategory.Control or UnicodeCategory.Format
            or UnicodeCategory.Surrogate or UnicodeCategory.PrivateUse or UnicodeCategory.OtherNotAssigned
            or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator or UnicodeCategory.SpaceSeparator);
    }
}
