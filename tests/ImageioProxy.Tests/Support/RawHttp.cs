using System.Net.Sockets;
using System.Text;

namespace ImageioProxy.Tests.Support;

/// <summary>A keep-alive HTTP/1.1 connection driven by hand: partial bodies, half-close, and
/// observing whether the server closed the connection.</summary>
public sealed class RawHttp : IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly List<byte> _buffered = [];

    private RawHttp(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
    }

    public static async Task<RawHttp> ConnectAsync(Uri server)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(server.Host, server.Port);
        return new RawHttp(socket);
    }

    public Task SendAsync(string text) => SendAsync(Encoding.ASCII.GetBytes(text.Replace("\n", "\r\n", StringComparison.Ordinal)));

    public async Task SendAsync(byte[] bytes) => await _stream.WriteAsync(bytes);

    public void ShutdownSend() => _socket.Shutdown(SocketShutdown.Send);

    /// <summary>Reads one response (status, headers, body by Content-Length).</summary>
    public async Task<CurlResult> ReadResponseAsync()
    {
        while (true)
        {
            var text = Encoding.ASCII.GetString([.. _buffered]);
            var end = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
            if (end >= 0)
            {
                var lines = text[..end].Split("\r\n");
                var status = int.Parse(lines[0].Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture);
                var headers = lines.Skip(1).Select(l => l.Split(':', 2))
                    .ToDictionary(p => p[0].Trim().ToLowerInvariant(), p => p[1].Trim());
                var length = headers.TryGetValue("content-length", out var value) ? int.Parse(value, System.Globalization.CultureInfo.InvariantCulture) : 0;
                while (_buffered.Count < end + 4 + length)
                {
                    await FillAsync();
                }
                var body = _buffered.GetRange(end + 4, length).ToArray();
                _buffered.RemoveRange(0, end + 4 + length);
                if (status == 100)
                {
                    continue;
                }
                return new CurlResult(status, headers, body, "");
            }
            await FillAsync();
        }
    }

    /// <summary>True when the server closed (or reset) the connection.</summary>
    public async Task<bool> IsClosedByServerAsync(TimeSpan wait)
    {
        using var timeout = new CancellationTokenSource(wait);
        try
        {
            var buffer = new byte[1];
            return await _stream.ReadAsync(buffer, timeout.Token) == 0;
        }
        catch (Exception e) when (e is OperationCanceledException or IOException && timeout.IsCancellationRequested)
        {
            return false; // still open when the wait ended
        }
        catch (IOException)
        {
            return true;
        }
    }

    private async Task FillAsync()
    {
        var buffer = new byte[65536];
        var n = await _stream.ReadAsync(buffer);
        if (n == 0)
        {
            throw new EndOfStreamException("The server closed the connection");
        }
        _buffered.AddRange(buffer.AsSpan(0, n).ToArray());
    }

    public async ValueTask DisposeAsync() => await _stream.DisposeAsync();
}
