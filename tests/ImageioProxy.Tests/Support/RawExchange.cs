using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace ImageioProxy.Tests.Support;

/// <summary>What came back for one hand-made request: the first final response (status 0 when none
/// came within the time limit or the server closed first), and whether the server closed.</summary>
public sealed record RawReply(int Status, IReadOnlyDictionary<string, string> Headers, string Body, bool Closed, bool TimedOut)
{
    public string? Header(string name) => Headers.TryGetValue(name.ToLowerInvariant(), out var value) ? value : null;

    public override string ToString() => Status == 0
        ? $"no response ({(TimedOut ? "timed out" : "closed")})"
        : $"{Status} {Body.TrimEnd()} [{string.Join("; ", Headers.Select(h => $"{h.Key}: {h.Value}"))}]";
}

/// <summary>One request over a fresh raw socket, for requests no HTTP client would send: any bytes,
/// bounded in time. Reads the response head and at most <see cref="MaxBody"/> bytes of body.</summary>
public static class RawExchange
{
    public const int MaxBody = 64 * 1024;

    public static EndPoint Tcp(Uri server) => new IPEndPoint(IPAddress.Parse(server.Host), server.Port);

    public static EndPoint Unix(string path) => new UnixDomainSocketEndPoint(path);

    public static Task<RawReply> SendAsync(EndPoint server, string request, TimeSpan timeout)
        => SendAsync(server, Encoding.Latin1.GetBytes(request), timeout);

    /// <summary>Sends <paramref name="request"/> (a send the server refuses midway is fine: it may answer
    /// and close before reading everything) and reads one final response.</summary>
    public static async Task<RawReply> SendAsync(EndPoint server, byte[] request, TimeSpan timeout)
    {
        using var socket = server is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        using var deadline = new CancellationTokenSource(timeout);
        await socket.ConnectAsync(server, deadline.Token);
        var sending = SendAllAsync(socket, request, deadline.Token);
        var reply = await ReadReplyAsync(socket, deadline.Token);
        try
        {
            await sending;
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // The server stopped reading (it answered early and closed): expected for refused bodies.
        }
        return reply;
    }

    private static async Task SendAllAsync(Socket socket, byte[] request, CancellationToken cancellationToken)
    {
        // Bounded pieces, so a server that answers early does not leave a huge send pending.
        for (var sent = 0; sent < request.Length;)
        {
            sent += await socket.SendAsync(request.AsMemory(sent, Math.Min(64 * 1024, request.Length - sent)), SocketFlags.None, cancellationToken);
        }
    }

    /// <summary>Reads until one final (non-1xx) response is complete, the server closes, or the deadline.</summary>
    public static async Task<RawReply> ReadReplyAsync(Socket socket, CancellationToken deadline)
    {
        var buffer = new List<byte>();
        var chunk = new byte[16 * 1024];
        var closed = false;
        var timedOut = false;
        while (true)
        {
            if (TryParse(buffer, out var reply, complete: false))
            {
                return reply;
            }
            int n;
            try
            {
                n = await socket.ReceiveAsync(chunk, SocketFlags.None, deadline);
            }
            catch (OperationCanceledException)
            {
                timedOut = true;
                break;
            }
            catch (SocketException)
            {
                closed = true; // reset
                break;
            }
            if (n == 0)
            {
                closed = true;
                break;
            }
            buffer.AddRange(chunk.AsSpan(0, n).ToArray());
        }
        if (TryParse(buffer, out var partial, complete: true))
        {
            return partial with { Closed = closed, TimedOut = timedOut };
        }
        return new RawReply(0, new Dictionary<string, string>(), "", closed, timedOut);
    }

    private static bool TryParse(List<byte> buffer, out RawReply reply, bool complete)
    {
        reply = null!;
        var text = Encoding.Latin1.GetString([.. buffer]);
        var start = 0;
        while (true)
        {
            var end = text.IndexOf("\r\n\r\n", start, StringComparison.Ordinal);
            if (end < 0)
            {
                return false;
            }
            var lines = text[start..end].Split("\r\n");
            var parts = lines[0].Split(' ', 3);
            if (parts.Length < 2 || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var status))
            {
                return false;
            }
            var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
            foreach (var line in lines.Skip(1))
            {
                var colon = line.IndexOf(':', StringComparison.Ordinal);
                if (colon > 0)
                {
                    headers[line[..colon].Trim().ToLowerInvariant()] = line[(colon + 1)..].Trim();
                }
            }
            var bodyStart = end + 4;
            if (status is >= 100 and < 200)
            {
                start = bodyStart; // 100 Continue: the final response follows
                continue;
            }
            var length = headers.TryGetValue("content-length", out var value) && long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var l) ? l : 0;
            var want = (int)Math.Min(length, MaxBody);
            if (text.Length - bodyStart < want && !complete)
            {
                return false;
            }
            var body = text.Substring(bodyStart, Math.Min(want, text.Length - bodyStart));
            reply = new RawReply(status, headers, body, Closed: false, TimedOut: false);
            return true;
        }
    }
}
