using System.Globalization;
using System.Text;

namespace TestSupport;

/// <summary>An HTTP request that changed the image and was answered 200: a PUT (data) or a PATCH zero.</summary>
/// <param name="Offset">First byte written.</param>
/// <param name="Length">Bytes written.</param>
/// <param name="IsZero">True for PATCH zero: then NBD Zero, Trim or Write requests may serve it; a PUT must be
/// served by NBD Write.</param>
/// <param name="RequestSent">When the client started sending the request, if known. NBD requests that started
/// before it cannot belong to this write, which matters when a range is written more than once.</param>
/// <param name="ResponseReceived">When the client had the 200.</param>
/// <param name="Label">Shown in failure messages.</param>
public sealed record HttpWriteFact(long Offset, long Length, bool IsZero, DateTimeOffset? RequestSent, DateTimeOffset ResponseReceived, string? Label = null)
{
    public long End => Offset + Length;

    public override string ToString() =>
        $"{Label ?? (IsZero ? "PATCH zero" : "PUT")} [{Offset}, {End})";
}

/// <summary>A PATCH flush (or PUT ?flush=y) that was answered 200.</summary>
public sealed record HttpFlushFact(DateTimeOffset RequestSent, DateTimeOffset ResponseReceived, string? Label = null)
{
    public override string ToString() => Label ?? "PATCH flush";
}

/// <summary>
/// Checks, from an nbdkit log and what the HTTP client saw, that the proxy honoured flush barriers:
/// <para>for every HTTP flush F answered 200, and every HTTP write W whose 200 arrived before F was sent,
/// every byte of W was written by an NBD request R that returned OK (on connection X), and an NBD Flush
/// that <em>started after R returned</em> and <em>returned OK before F's response arrived</em> ran on X
/// (or on any connection, when the export has multi-conn).</para>
/// </summary>
/// <remarks>
/// <para>Two clocks are involved. Order inside the log (R returned, then the flush started) uses log line order,
/// which is exact: the log filter writes each line under a lock as the event happens. Order between the log
/// and the HTTP client (R returned before W's 200; the flush returned before F's 200) uses the log's
/// microsecond wall-clock timestamps against the client's <see cref="DateTimeOffset"/>s; this is sound on one
/// machine because the filter logs a return before nbdkit sends the reply, so a causally later client time is
/// never earlier. Comparisons across clocks are inclusive.</para>
/// <para>A candidate R for W must overlap W, have the right kind, return OK no later than W's 200 and, if
/// <see cref="HttpWriteFact.RequestSent"/> is known, start no earlier than it.</para>
/// </remarks>
public static class FlushBarrierChecker
{
    /// <summary>Returns one message per violation; empty when the invariant holds.</summary>
    public static IReadOnlyList<string> Check(
        IReadOnlyList<NbdkitRequest> requests,
        IEnumerable<HttpWriteFact> writes,
        IEnumerable<HttpFlushFact> flushes,
        bool multiConn)
    {
        ArgumentNullException.ThrowIfNull(requests);
        var writeList = writes.ToList();
        var nbdFlushes = requests.Where(r => r.Action == "Flush" && r.Succeeded).ToList();
        var violations = new List<string>();

        foreach (var flush in flushes)
        {
            foreach (var write in writeList.Where(w => w.ResponseReceived < flush.RequestSent && w.Length > 0))
            {
                var candidates = requests
                    .Where(r => IsCandidate(r, write))
                    .ToList();

                // Byte ranges of W made durable for F: by a candidate with a barrier flush after it.
                var durable = new List<(long Start, long End)>();
                var unflushed = new List<NbdkitRequest>();
                foreach (var candidate in candidates)
                {
                    var barrier = nbdFlushes.FirstOrDefault(f =>
                        (multiConn || f.Connection == candidate.Connection)
                        && f.Start.Sequence > candidate.Return!.Sequence
                        && f.Return!.Timestamp <= flush.ResponseReceived);
                    if (barrier is null)
                    {
                        unflushed.Add(candidate);
                    }
                    else
                    {
                        durable.Add((Math.Max(candidate.Offset, write.Offset), Math.Min(candidate.End, write.End)));
                    }
                }

                var gaps = Uncovered(write.Offset, write.End, durable);
                if (gaps.Count == 0)
                {
                    continue;
                }

                violations.Add(Describe(flush, write, gaps, candidates, unflushed, requests, multiConn));
            }
        }

        return violations;
    }

    /// <summary>Throws with every violation when the invariant does not hold.</summary>
    public static void AssertHolds(
        IReadOnlyList<NbdkitRequest> requests,
        IEnumerable<HttpWriteFact> writes,
        IEnumerable<HttpFlushFact> flushes,
        bool multiConn)
    {
        var violations = Check(requests, writes, flushes, multiConn);
        if (violations.Count > 0)
        {
            throw new Xunit.Sdk.XunitException(
                $"Flush barrier violated ({violations.Count}):{Environment.NewLine}{string.Join(Environment.NewLine, violations)}");
        }
    }

    private static bool IsCandidate(NbdkitRequest request, HttpWriteFact write) =>
        (write.IsZero ? request.IsWriteLike : request.Action == "Write")
        && request.Succeeded
        && request.Offset < write.End && request.End > write.Offset
        && request.Return!.Timestamp <= write.ResponseReceived
        && (write.RequestSent is not { } sent || request.Start.Timestamp >= sent);

    private static List<(long Start, long End)> Uncovered(long start, long end, List<(long Start, long End)> covered)
    {
        var gaps = new List<(long, long)>();
        var position = start;
        foreach (var (coveredStart, coveredEnd) in covered.OrderBy(c => c.Start))
        {
            if (coveredStart > position)
            {
                gaps.Add((position, Math.Min(coveredStart, end)));
            }

            position = Math.Max(position, coveredEnd);
            if (position >= end)
            {
                break;
            }
        }

        if (position < end)
        {
            gaps.Add((position, end));
        }

        return gaps;
    }

    private static string Describe(
        HttpFlushFact flush,
        HttpWriteFact write,
        List<(long Start, long End)> gaps,
        List<NbdkitRequest> candidates,
        List<NbdkitRequest> unflushed,
        IReadOnlyList<NbdkitRequest> requests,
        bool multiConn)
    {
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture,
            $"- {flush} (sent {Time(flush.RequestSent)}, answered {Time(flush.ResponseReceived)}) does not cover {write} (answered {Time(write.ResponseReceived)}): ");
        text.Append("not durable ").Append(string.Join(", ", gaps.Select(g => $"[{g.Start}, {g.End})")));
        var written = candidates.Select(c => (Math.Max(c.Offset, write.Offset), Math.Min(c.End, write.End))).ToList();
        if (Uncovered(write.Offset, write.End, written) is { Count: > 0 } notWritten)
        {
            text.Append("; ").Append(string.Join(", ", notWritten.Select(g => $"[{g.Start}, {g.End})")));
            var overlapping = requests.Where(r => r.IsWriteLike && r.Offset < write.End && r.End > write.Offset).ToList();
            text.Append(" never written by a successful NBD ")
                .Append(write.IsZero ? "Write/Zero/Trim" : "Write")
                .Append(" that returned before the HTTP response");
            if (overlapping.Count > 0)
            {
                text.Append("; overlapping NBD requests: ").Append(string.Join("; ", overlapping.Take(5)));
            }

            return text.ToString();
        }

        text.Append(" has no NBD Flush ")
            .Append(multiConn ? "on any connection" : "on the same connection")
            .Append(" that started after the write returned and returned before the HTTP flush response; unflushed: ")
            .Append(string.Join("; ", unflushed.Take(5)));
        return text.ToString();
    }

    private static string Time(DateTimeOffset time) => time.ToString("HH:mm:ss.ffffff", CultureInfo.InvariantCulture);
}
