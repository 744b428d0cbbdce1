using System.Globalization;
using System.Text;

namespace TestSupport;

/// <summary>Whether a log line is the call of an operation, its return, or a one-line event.</summary>
public enum NbdkitLogPhase
{
    /// <summary>A one-line event: Connect, Disconnect, Ready, Fork.</summary>
    Event,
    /// <summary>The call, e.g. <c>connection=1 Write id=1 offset=0x0 count=0x10000 fua=0 ...</c>.</summary>
    Start,
    /// <summary>The return, e.g. <c>connection=1 ...Write id=1 return=-1 error=EIO</c>.</summary>
    Return,
}

/// <summary>One line of an nbdkit <c>log</c> filter logfile (nbdkit-log-filter(1), "LOG FILE FORMAT").</summary>
/// <param name="Sequence">0-based position among parsed events. The filter writes lines under a lock as things
/// happen, so this is the server-side order of events.</param>
/// <param name="Timestamp">The line's wall-clock time (microseconds), in the log's time zone.</param>
/// <param name="Connection">nbdkit's connection number, or null for lines outside a connection.</param>
/// <param name="Action">Read, Write, Zero, Trim, Flush, Extents, Cache, Connect, Disconnect, Preconnect, ...</param>
/// <param name="Id">The request id (unique per connection) that pairs a call with its return.</param>
/// <param name="Fields">Every key=value of the line, values as written (hex numbers keep their 0x).</param>
public sealed record NbdkitLogEvent(
    int Sequence,
    DateTimeOffset Timestamp,
    long? Connection,
    string Action,
    NbdkitLogPhase Phase,
    long? Id,
    IReadOnlyDictionary<string, string> Fields)
{
    public long? Offset => NbdkitLog.GetNumber(Fields, "offset");

    public long? Count => NbdkitLog.GetNumber(Fields, "count");

    /// <summary>The return value of a Return line (0 = success, -1 = error).</summary>
    public long? ReturnValue => NbdkitLog.GetNumber(Fields, "return");

    /// <summary>The errno name of a failed return, e.g. "EIO".</summary>
    public string? Error => Fields.GetValueOrDefault("error");

    public bool Fua => NbdkitLog.GetNumber(Fields, "fua") is > 0;
}

/// <summary>A request paired from its Start and Return lines.</summary>
public sealed record NbdkitRequest(long Connection, long Id, string Action, NbdkitLogEvent Start, NbdkitLogEvent? Return)
{
    public long Offset => Start.Offset ?? 0;

    public long Count => Start.Count ?? 0;

    public long End => Offset + Count;

    public bool Fua => Start.Fua;

    /// <summary>True when the request returned 0.</summary>
    public bool Succeeded => Return?.ReturnValue == 0;

    /// <summary>Write, Zero and Trim change the image and need a flush to be persistent.</summary>
    public bool IsWriteLike => Action is "Write" or "Zero" or "Trim";

    public override string ToString() =>
        $"connection={Connection} {Action} id={Id}" + (Start.Offset is null ? "" : $" offset={Offset} count={Count}")
        + (Fua ? " fua" : "")
        + $" [line {Start.Sequence + 1}" + (Return is null ? ", never returned]" : $"..{Return.Sequence + 1}, return={Return.ReturnValue}{(Return.Error is null ? "" : " " + Return.Error)}]");
}

/// <summary>Parser for nbdkit's log filter logfile (checked against nbdkit 1.32.5):
/// <code>
/// 2026-11-25 12:25:22.627544 connection=1 Write id=1 offset=0x0 count=0x10000 fua=0 ...
/// 2026-11-25 12:25:22.627634 connection=1 ...Write id=1 return=0
/// 2026-11-25 12:25:27.320566 connection=1 ...Write id=1 return=-1 error=EIO
/// 2026-11-25 12:25:27.329251 connection=2 ...Extents id=2 extents=(0x0 0x800000 "hole,zero") return=0
/// </code></summary>
public static class NbdkitLog
{
    private const string TimestampFormat = "yyyy-MM-dd HH:mm:ss.ffffff";

    /// <summary>Parses a logfile. nbdkit writes local time without a zone; pass the zone it ran in if it is
    /// not this process's local zone.</summary>
    public static IReadOnlyList<NbdkitLogEvent> ParseFile(string path, TimeZoneInfo? logTimeZone = null) =>
        Parse(File.ReadAllText(path), logTimeZone);

    /// <summary>Parses logfile text. Blank lines are skipped; a malformed line throws
    /// <see cref="FormatException"/> naming its line number.</summary>
    public static IReadOnlyList<NbdkitLogEvent> Parse(string text, TimeZoneInfo? logTimeZone = null)
    {
        ArgumentNullException.ThrowIfNull(text);
        var zone = logTimeZone ?? TimeZoneInfo.Local;
        var events = new List<NbdkitLogEvent>();
        var lineNumber = 0;
        foreach (var rawLine in text.Split('\n'))
        {
            lineNumber++;
            var line = rawLine.TrimEnd('\r');
            if (line.Length == 0)
            {
                continue;
            }

            try
            {
                events.Add(ParseLine(line, events.Count, zone));
            }
            catch (FormatException e)
            {
                throw new FormatException($"nbdkit log line {lineNumber}: {e.Message}: {line}", e);
            }
        }

        return events;
    }

    /// <summary>Pairs Start and Return lines by (connection, id). Requests are ordered by their Start line.
    /// Requests whose Return is missing (nbdkit killed mid-request) have a null <see cref="NbdkitRequest.Return"/>.</summary>
    public static IReadOnlyList<NbdkitRequest> PairRequests(IEnumerable<NbdkitLogEvent> events)
    {
        var open = new Dictionary<(long Connection, long Id), NbdkitLogEvent>();
        var requests = new List<NbdkitRequest>();
        var indexByKey = new Dictionary<(long, long), int>();
        foreach (var logEvent in events)
        {
            if (logEvent.Connection is not { } connection || logEvent.Id is not { } id || logEvent.Phase == NbdkitLogPhase.Event)
            {
                continue;
            }

            var key = (connection, id);
            if (logEvent.Phase == NbdkitLogPhase.Start)
            {
                if (!open.TryAdd(key, logEvent))
                {
                    throw new FormatException($"nbdkit log event {logEvent.Sequence + 1}: id {id} on connection {connection} started twice");
                }

                indexByKey[key] = requests.Count;
                requests.Add(new NbdkitRequest(connection, id, logEvent.Action, logEvent, null));
            }
            else
            {
                if (!open.Remove(key, out var start))
                {
                    throw new FormatException($"nbdkit log event {logEvent.Sequence + 1}: return of id {id} on connection {connection} that never started");
                }

                if (start.Action != logEvent.Action)
                {
                    throw new FormatException($"nbdkit log event {logEvent.Sequence + 1}: {logEvent.Action} returns id {id} started as {start.Action}");
                }

                var index = indexByKey[key];
                requests[index] = requests[index] with { Return = logEvent };
            }
        }

        return requests;
    }

    internal static long? GetNumber(IReadOnlyDictionary<string, string> fields, string key)
    {
        if (!fields.TryGetValue(key, out var text))
        {
            return null;
        }

        if (text.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
        {
            return long.Parse(text.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture);
        }

        return long.Parse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
    }

    private static NbdkitLogEvent ParseLine(string line, int sequence, TimeZoneInfo zone)
    {
        // "YYYY-MM-DD HH:MM:SS.ffffff " is 26 characters and a space.
        if (line.Length < TimestampFormat.Length + 2 || line[TimestampFormat.Length] != ' '
            || !DateTime.TryParseExact(line.AsSpan(0, TimestampFormat.Length), TimestampFormat, CultureInfo.InvariantCulture, DateTimeStyles.None, out var local))
        {
            throw new FormatException("no timestamp");
        }

        var timestamp = new DateTimeOffset(local, zone.GetUtcOffset(local));
        var tokens = Tokenize(line.AsSpan(TimestampFormat.Length + 1));

        long? connection = null;
        var index = 0;
        if (index < tokens.Count && tokens[index].StartsWith("connection=", StringComparison.Ordinal))
        {
            connection = long.Parse(tokens[index].AsSpan("connection=".Length), CultureInfo.InvariantCulture);
            index++;
        }

        if (index >= tokens.Count)
        {
            throw new FormatException("no action");
        }

        var action = tokens[index++];
        var phase = NbdkitLogPhase.Event;
        if (action.StartsWith("...", StringComparison.Ordinal))
        {
            phase = NbdkitLogPhase.Return;
            action = action[3..];
        }
        else if (tokens[^1] == "...")
        {
            phase = NbdkitLogPhase.Start;
        }

        if (action.Length == 0 || !action.All(char.IsAsciiLetter))
        {
            throw new FormatException($"bad action '{action}'");
        }

        var fields = new Dictionary<string, string>(StringComparer.Ordinal);
        for (; index < tokens.Count; index++)
        {
            var token = tokens[index];
            if (token == "...")
            {
                continue;
            }

            var equals = token.IndexOf('=', StringComparison.Ordinal);
            if (equals <= 0)
            {
                throw new FormatException($"bad field '{token}'");
            }

            fields[token[..equals]] = Unquote(token[(equals + 1)..]);
        }

        long? id = fields.TryGetValue("id", out var idText) ? long.Parse(idText, CultureInfo.InvariantCulture) : null;
        return new NbdkitLogEvent(sequence, timestamp, connection, action, phase, id, fields);
    }

    // Splits on spaces outside shell quotes and parentheses (export="a b", extents=(0x0 0x200 "hole,zero")).
    private static List<string> Tokenize(ReadOnlySpan<char> text)
    {
        var tokens = new List<string>();
        var current = new StringBuilder();
        var depth = 0;
        char quote = '\0';
        for (var i = 0; i < text.Length; i++)
        {
            var c = text[i];
            if (quote != '\0')
            {
                current.Append(c);
                if (c == '\\' && quote == '"' && i + 1 < text.Length)
                {
                    current.Append(text[++i]);
                }
                else if (c == quote)
                {
                    quote = '\0';
                }

                continue;
            }

            switch (c)
            {
                case '"' or '\'':
                    quote = c;
                    current.Append(c);
                    break;
                case '(':
                    depth++;
                    current.Append(c);
                    break;
                case ')':
                    depth--;
                    current.Append(c);
                    break;
                case ' ' when depth == 0:
                    if (current.Length > 0)
                    {
                        tokens.Add(current.ToString());
                        current.Clear();
                    }

                    break;
                default:
                    current.Append(c);
                    break;
            }
        }

        if (quote != '\0' || depth != 0)
        {
            throw new FormatException("unbalanced quotes or parentheses");
        }

        if (current.Length > 0)
        {
            tokens.Add(current.ToString());
        }

        return tokens;
    }

    // Removes one level of shell quoting from a whole value ("" -> empty, 'a b' -> a b). Lists keep their text.
    private static string Unquote(string value)
    {
        if (value.Length >= 2 && (value[0] == '"' || value[0] == '\'') && value[^1] == value[0])
        {
            var inner = value[1..^1];
            return value[0] == '"' ? inner.Replace("\\\"", "\"", StringComparison.Ordinal).Replace("\\\\", "\\", StringComparison.Ordinal) : inner;
        }

        return value;
    }
}
