// PLACEHOLDER until branch "pieces" lands; deleted at merge.
namespace ImageioProxy.Http;

public readonly record struct RangeRequest(long? First, long? Last, long? SuffixLength);

public readonly record struct ContentRange(long First, long? Last, long? Complete);

public static class HttpRanges
{
    public static bool TryParseRange(string value, out RangeRequest range, out string error)
    {
        range = default;
        error = $"Cannot satisfy range {value}, invalid range or multiple ranges";
        if (!value.StartsWith("bytes=", StringComparison.Ordinal))
        {
            return false;
        }
        var parts = value[6..].Split('-');
        if (parts.Length != 2 || parts[0].Length + parts[1].Length == 0)
        {
            return false;
        }
        long? first = parts[0].Length > 0 && long.TryParse(parts[0], out var f) ? f : null;
        long? last = parts[1].Length > 0 && long.TryParse(parts[1], out var l) ? l : null;
        if ((parts[0].Length > 0 && first is null) || (parts[1].Length > 0 && last is null))
        {
            return false;
        }
        if (first is null)
        {
            range = new RangeRequest(null, null, last);
            return true;
        }
        if (last is not null && last < first)
        {
            return false;
        }
        range = new RangeRequest(first, last, null);
        return true;
    }

    public static bool TryParseContentRange(string value, out ContentRange range, out string error)
    {
        range = default;
        error = $"Invalid Content-Range '{value}'";
        var m = System.Text.RegularExpressions.Regex.Match(value, @"^bytes (\d+)-(\d+|\*)/(\d+|\*)$");
        if (!m.Success || !long.TryParse(m.Groups[1].Value, out var first))
        {
            return false;
        }
        long? last = m.Groups[2].Value == "*" ? null : long.TryParse(m.Groups[2].Value, out var l) ? l : -1;
        long? complete = m.Groups[3].Value == "*" ? null : long.TryParse(m.Groups[3].Value, out var c) ? c : -1;
        if (last < first || (last is not null && complete is not null && last >= complete) || last == -1 || complete == -1)
        {
            return false;
        }
        range = new ContentRange(first, last, complete);
        return true;
    }
}
