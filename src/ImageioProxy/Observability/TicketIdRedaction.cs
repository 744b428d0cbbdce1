using System.Diagnostics;
using System.Text;
using OpenTelemetry;

namespace ImageioProxy.Observability;

/// <summary>Ticket ids are bearer secrets (imageio issue #26, ecosystem.md §5): they appear in request
/// paths, so every path that leaves the process (logs, span names and tags) goes through here.</summary>
public static class TicketIdRedaction
{
    public const string Placeholder = "{ticket_id}";

    private static readonly string[] Prefixes = ["/images/", "/tickets/"];

    /// <summary>"/images/ID/extents?x" → "/images/{ticket_id}/extents?x"; the same for "/tickets/ID"
    /// and for full URLs. Text without those prefixes is returned as is.</summary>
    public static string Redact(string text)
    {
        if (!ContainsPrefix(text))
        {
            return text;
        }
        var result = new StringBuilder(text.Length);
        var i = 0;
        while (i < text.Length)
        {
            var (at, prefix) = NextPrefix(text, i);
            if (at < 0)
            {
                result.Append(text, i, text.Length - i);
                break;
            }
            var idStart = at + prefix.Length;
            result.Append(text, i, idStart - i);
            var idEnd = idStart;
            while (idEnd < text.Length && text[idEnd] is not ('/' or '?' or '#' or ' ' or '"'))
            {
                idEnd++;
            }
            if (idEnd > idStart)
            {
                result.Append(Placeholder);
            }
            i = idEnd;
        }
        return result.ToString();
    }

    private static bool ContainsPrefix(string text)
    {
        foreach (var prefix in Prefixes)
        {
            if (text.Contains(prefix, StringComparison.OrdinalIgnoreCase))
            {
                return true;
            }
        }
        return false;
    }

    private static (int At, string Prefix) NextPrefix(string text, int from)
    {
        var best = -1;
        var bestPrefix = "";
        foreach (var prefix in Prefixes)
        {
            var at = text.IndexOf(prefix, from, StringComparison.OrdinalIgnoreCase);
            if (at >= 0 && (best < 0 || at < best))
            {
                best = at;
                bestPrefix = prefix;
            }
        }
        return (best, bestPrefix);
    }

    /// <summary>Redacts the display name and every string tag of an activity.</summary>
    public static void Redact(Activity activity)
    {
        var name = Redact(activity.DisplayName);
        if (!ReferenceEquals(name, activity.DisplayName))
        {
            activity.DisplayName = name;
        }
        List<KeyValuePair<string, string>>? changes = null;
        foreach (var tag in activity.TagObjects)
        {
            if (tag.Value is string value)
            {
                var redacted = Redact(value);
                if (!ReferenceEquals(redacted, value))
                {
                    (changes ??= []).Add(new(tag.Key, redacted));
                }
            }
        }
        if (changes is not null)
        {
            foreach (var (key, value) in changes)
            {
                activity.SetTag(key, value);
            }
        }
    }
}

/// <summary>Runs before every exporter: no span leaves with a ticket id in its name or tags
/// (ASP.NET Core's url.path, url.full, http.route and the display name all carry the path).</summary>
public sealed class TicketIdRedactingProcessor : BaseProcessor<Activity>
{
    public override void OnStart(Activity data) => TicketIdRedaction.Redact(data);

    public override void OnEnd(Activity data) => TicketIdRedaction.Redact(data);
}
