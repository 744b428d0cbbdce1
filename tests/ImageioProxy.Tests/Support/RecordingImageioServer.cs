using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json;
using ImageioProxy.Http;

namespace ImageioProxy.Tests.Support;

/// <summary>One request as it arrived, head bytes verbatim.</summary>
/// <param name="Arrived">Position in the server's event order when the head was read.</param>
/// <param name="Answered">Position when the response was sent.</param>
public sealed record RecordedRequest(
    int Arrived,
    int Answered,
    int ConnectionId,
    bool OverUnixSocket,
    string Method,
    string Target,
    IReadOnlyList<(string Name, string Value)> Headers,
    string Head,
    byte[] Body,
    int Status)
{
    public string BodyText => Encoding.UTF8.GetString(Body);

    public string? Header(string name) =>
        Headers.Where(h => h.Name.Equals(name, StringComparison.OrdinalIgnoreCase)).Select(h => h.Value).FirstOrDefault();

    public bool IsFlush => Method == "PATCH" && BodyText.Contains("\"flush\"", StringComparison.Ordinal) && !BodyText.Contains("\"zero\"", StringComparison.Ordinal);

    public bool IsZero => Method == "PATCH" && BodyText.Contains("\"zero\"", StringComparison.Ordinal);
}

/// <summary>Settings of <see cref="RecordingImageioServer"/>.</summary>
public sealed record RecordingImageioServerOptions
{
    public int ImageSize { get; init; } = 64 * 1024 * 1024;

    /// <summary>The OPTIONS reply body; null means imageio's nbd-backend reply with 8/8 and the unix socket if any.</summary>
    public string? OptionsJson { get; init; }

    /// <summary>Serve HTTPS with this certificate.</summary>
    public X509Certificate2? Certificate { get; init; }

    /// <summary>Also listen on a unix socket (reported as "unix_socket" by the default OPTIONS reply).</summary>
    public bool ListenOnUnixSocket { get; init; }

    /// <summary>Return a status other than the normal one for a request (the body is then "injected error\n").</summary>
    public Func<RecordedRequest, int?>? InjectStatus { get; init; }

    /// <summary>Send "connection: close" after this request and close the connection.</summary>
    public Func<RecordedRequest, bool>? CloseAfter { get; init; }
}

/// <summary>
/// A stand-in imageio server over raw sockets that records every request exactly as it arrived (head bytes,
/// header order, body, connection) and keeps the uploaded image in memory. It answers like imageio: 200 with
/// content-length 0 for PUT/PATCH, JSON for OPTIONS, 206 with content-range for ranged GET.
/// </summary>
public sealed class RecordingImageioServer : IAsyncDisposable
{
    private readonly RecordingImageioServerOptions _options;
    private readonly Socket _tcpListener;
    private readonly Socket? _unixListener;
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentQueue<RecordedRequest> _requests = new();
    private readonly ConcurrentDictionary<int, ConnectionRecord> _connections = new();
    private readonly List<Task> _tasks = [];
    private readonly byte[] _image;
    private readonly string? _directory;
    private int _clock;
    private int _nextConnectionId;
    private int _active;
    private int _maxActive;

    private RecordingImageioServer(RecordingImageioServerOptions options)
    {
        _options = options;
        _image = new byte[options.ImageSize];
        _tcpListener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _tcpListener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _tcpListener.Listen(64);
        if (options.ListenOnUnixSocket)
        {
            _directory = Directory.CreateTempSubdirectory("imageio-stub-").FullName;
            UnixSocketPath = Path.Combine(_directory, "local.sock");
            _unixListener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            _unixListener.Bind(new UnixDomainSocketEndPoint(UnixSocketPath));
            _unixListener.Listen(64);
        }

        _tasks.Add(AcceptAsync(_tcpListener, overUnixSocket: false));
        if (_unixListener is not null)
        {
            _tasks.Add(AcceptAsync(_unixListener, overUnixSocket: true));
        }
    }

    public static RecordingImageioServer Start(RecordingImageioServerOptions? options = null) => new(options ?? new());

    public Uri ImageUrl => new($"{(_options.Certificate is null ? "http" : "https")}://127.0.0.1:{((IPEndPoint)_tcpListener.LocalEndPoint!).Port}/images/ticket-1");

    public int Port => ((IPEndPoint)_tcpListener.LocalEndPoint!).Port;

    public string? UnixSocketPath { get; }

    /// <summary>Requests in the order their responses were sent.</summary>
    public IReadOnlyList<RecordedRequest> Requests => [.. _requests.OrderBy(r => r.Answered)];

    /// <summary>Accepted connections by id (1-based, in accept order).</summary>
    public IReadOnlyDictionary<int, ConnectionRecord> Connections => _connections;

    /// <summary>Most requests being served at the same time.</summary>
    public int MaxConcurrentRequests => Volatile.Read(ref _maxActive);

    public byte[] Image => _image;

    /// <summary>A self-signed certificate for 127.0.0.1 and localhost.</summary>
    public static X509Certificate2 CreateCertificate()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=127.0.0.1", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        san.AddDnsName("localhost");
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        return request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _tcpListener.Dispose();
        _unixListener?.Dispose();
        foreach (var connection in _connections.Values)
        {
            connection.Socket.Dispose();
        }

        try
        {
            await Task.WhenAll(_tasks.ToArray());
        }
        catch
        {
        }

        if (_directory is not null)
        {
            Directory.Delete(_directory, recursive: true);
        }

        _stop.Dispose();
    }

    private async Task AcceptAsync(Socket listener, bool overUnixSocket)
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await listener.AcceptAsync(_stop.Token);
            }
            catch (Exception) when (_stop.IsCancellationRequested)
            {
                return;
            }
            catch (ObjectDisposedException)
            {
                return;
            }

            var id = Interlocked.Increment(ref _nextConnectionId);
            var record = new ConnectionRecord(id, overUnixSocket, socket);
            _connections[id] = record;
            lock (_tasks)
            {
                _tasks.Add(Task.Run(() => ServeAsync(record)));
            }
        }
    }

    private async Task ServeAsync(ConnectionRecord connection)
    {
        Stream stream = new NetworkStream(connection.Socket, ownsSocket: true);
        try
        {
            if (_options.Certificate is { } certificate && !connection.OverUnixSocket)
            {
                var ssl = new SslStream(stream);
                await ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions { ServerCertificate = certificate }, _stop.Token);
                stream = ssl;
            }

            var reader = new HeadReader(stream);
            while (await reader.ReadHeadAsync(_stop.Token) is { } head)
            {
                var active = Interlocked.Increment(ref _active);
                InterlockedMax(ref _maxActive, active);
                try
                {
                    var arrived = Interlocked.Increment(ref _clock);
                    var (method, target, headers) = ParseHead(head);
                    var length = headers.Where(h => h.Name.Equals("content-length", StringComparison.OrdinalIgnoreCase))
                        .Select(h => long.Parse(h.Value, CultureInfo.InvariantCulture)).FirstOrDefault();
                    var body = new byte[length];
                    await reader.ReadBodyAsync(body, _stop.Token);
                    var request = new RecordedRequest(arrived, 0, connection.Id, connection.OverUnixSocket, method, target, headers, head, body, 0);

                    var (status, responseHeaders, responseBody) = _options.InjectStatus?.Invoke(request) is { } injected
                        ? (injected, new List<string> { "content-type: text/plain; charset=UTF-8" }, Encoding.UTF8.GetBytes("injected error\n"))
                        : Handle(request);
                    var close = _options.CloseAfter?.Invoke(request) == true;
                    if (close)
                    {
                        responseHeaders.Add("connection: close");
                    }

                    var response = new StringBuilder();
                    response.Append(CultureInfo.InvariantCulture, $"HTTP/1.1 {status} {Reason(status)}\r\n");
                    response.Append("server: imageio/2.5.3\r\n");
                    response.Append(CultureInfo.InvariantCulture, $"date: {DateTime.UtcNow:R}\r\n");
                    response.Append(CultureInfo.InvariantCulture, $"content-length: {responseBody.Length}\r\n");
                    foreach (var header in responseHeaders)
                    {
                        response.Append(header).Append("\r\n");
                    }

                    response.Append("\r\n");
                    var answered = Interlocked.Increment(ref _clock);
                    _requests.Enqueue(request with { Answered = answered, Status = status });
                    Interlocked.Increment(ref connection.RequestCount);
                    await stream.WriteAsync(Encoding.Latin1.GetBytes(response.ToString()), _stop.Token);
                    await stream.WriteAsync(responseBody, _stop.Token);
                    await stream.FlushAsync(_stop.Token);
                    if (close)
                    {
                        break;
                    }
                }
                finally
                {
                    Interlocked.Decrement(ref _active);
                }
            }

            connection.ClosedByClient = !_stop.IsCancellationRequested;
        }
        catch (Exception) when (_stop.IsCancellationRequested)
        {
        }
        catch (IOException)
        {
            connection.ClosedByClient = true;
        }
        finally
        {
            await stream.DisposeAsync();
        }
    }

    private (int Status, List<string> Headers, byte[] Body) Handle(RecordedRequest request)
    {
        switch (request.Method)
        {
            case "OPTIONS":
            {
                var json = _options.OptionsJson ?? JsonSerializer.Serialize(new Dictionary<string, object?>
                {
                    ["unix_socket"] = UnixSocketPath,
                    ["features"] = new[] { "checksum", "extents", "flush", "zero" },
                    ["max_readers"] = 8,
                    ["max_writers"] = 8,
                });
                return (200, ["allow: OPTIONS,GET,PUT,PATCH", "content-type: application/json"], Encoding.UTF8.GetBytes(json + "\n"));
            }

            case "PUT":
            {
                long offset = 0;
                if (request.Header("content-range") is { } contentRange)
                {
                    if (!HttpRanges.TryParseContentRange(contentRange, out var range, out var error))
                    {
                        return (400, [], Encoding.UTF8.GetBytes(error + "\n"));
                    }

                    offset = range.First;
                }

                lock (_image)
                {
                    request.Body.CopyTo(_image.AsSpan((int)offset));
                }

                return (200, [], []);
            }

            case "PATCH":
            {
                using var json = JsonDocument.Parse(request.Body);
                if (json.RootElement.GetProperty("op").GetString() == "zero")
                {
                    var offset = json.RootElement.GetProperty("offset").GetInt64();
                    var size = json.RootElement.GetProperty("size").GetInt64();
                    lock (_image)
                    {
                        _image.AsSpan((int)offset, (int)size).Clear();
                    }
                }

                return (200, [], []);
            }

            case "GET":
            {
                if (request.Header("range") is not { } rangeHeader || !HttpRanges.TryParseRange(rangeHeader, out var range, out _)
                    || range.First is not { } first || range.Last is not { } last)
                {
                    return (416, [], []);
                }

                byte[] data;
                lock (_image)
                {
                    data = _image.AsSpan((int)first, (int)(last - first + 1)).ToArray();
                }

                return (206, ["content-type: application/octet-stream", $"content-range: bytes {first}-{last}/{_image.Length}"], data);
            }

            default:
                return (405, [], Encoding.UTF8.GetBytes($"Method '{request.Method}' not defined\n"));
        }
    }

    private static (string Method, string Target, List<(string Name, string Value)> Headers) ParseHead(string head)
    {
        var lines = head.Split("\r\n");
        var requestLine = lines[0].Split(' ');
        var headers = lines.Skip(1).Where(l => l.Length > 0)
            .Select(l => (l[..l.IndexOf(':', StringComparison.Ordinal)], l[(l.IndexOf(':', StringComparison.Ordinal) + 1)..].Trim()))
            .ToList();
        return (requestLine[0], requestLine[1], headers);
    }

    private static string Reason(int status) => status switch
    {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        416 => "Requested Range Not Satisfiable",
        500 => "Internal Server Error",
        _ => "Status",
    };

    private static void InterlockedMax(ref int location, int value)
    {
        var current = Volatile.Read(ref location);
        while (value > current && Interlocked.CompareExchange(ref location, value, current) is var seen && seen != current)
        {
            current = seen;
        }
    }

    /// <summary>An accepted connection.</summary>
    public sealed class ConnectionRecord(int id, bool overUnixSocket, Socket socket)
    {
        public int Id { get; } = id;

        public bool OverUnixSocket { get; } = overUnixSocket;

        internal Socket Socket { get; } = socket;

        internal int RequestCount;

        public int Requests => Volatile.Read(ref RequestCount);

        /// <summary>True once the client closed the connection.</summary>
        public bool ClosedByClient { get; internal set; }
    }

    /// <summary>Reads request heads (up to the blank line) and bodies from a stream.</summary>
    private sealed class HeadReader(Stream stream)
    {
        private readonly byte[] _buffer = new byte[64 * 1024];
        private int _start;
        private int _end;

        public async Task<string?> ReadHeadAsync(CancellationToken cancellationToken)
        {
            while (true)
            {
                var terminator = _buffer.AsSpan(_start, _end - _start).IndexOf("\r\n\r\n"u8);
                if (terminator >= 0)
                {
                    var head = Encoding.Latin1.GetString(_buffer, _start, terminator + 4);
                    _start += terminator + 4;
                    return head;
                }

                if (_start > 0)
                {
                    _buffer.AsSpan(_start, _end - _start).CopyTo(_buffer);
                    _end -= _start;
                    _start = 0;
                }

                if (_end == _buffer.Length)
                {
                    throw new IOException("request head too large");
                }

                var read = await stream.ReadAsync(_buffer.AsMemory(_end), cancellationToken);
                if (read == 0)
                {
                    return _end == 0 ? null : throw new IOException("EOF inside a request head");
                }

                _end += read;
            }
        }

        public async Task ReadBodyAsync(Memory<byte> body, CancellationToken cancellationToken)
        {
            var buffered = Math.Min(body.Length, _end - _start);
            _buffer.AsMemory(_start, buffered).CopyTo(body);
            _start += buffered;
            if (buffered < body.Length)
            {
                await stream.ReadExactlyAsync(body[buffered..], cancellationToken);
            }
        }
    }
}
