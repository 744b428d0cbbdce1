using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;

namespace ImageioProxy.Tests.Support;

/// <summary>Settings of <see cref="V2vLikeClient"/>; the defaults are virt-v2v's.</summary>
public sealed record V2vLikeClientOptions
{
    /// <summary>The plugin's <c>cafile=</c>: PEM CA certificates to trust instead of the system store.</summary>
    public string? CaFile { get; init; }

    /// <summary>The plugin's <c>insecure=true</c>: no certificate or host name check. virt-v2v passes it
    /// unless <c>-oo ovirt-verifypeer</c>, so it is what real uploads do.</summary>
    public bool Insecure { get; init; }

    /// <summary>The plugin's <c>is_ovirt_host=true</c>: the pool uses the <c>unix_socket</c> from OPTIONS
    /// (OPTIONS itself still goes over TCP).</summary>
    public bool IsOvirtHost { get; init; }

    /// <summary>The plugin's <c>IDLE_TIMEOUT</c> (30 s): a pooled connection idle for longer gets a
    /// PATCH flush. The keeper looks every half of it.</summary>
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Clock of the idle keeper.</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    /// <summary>The plugin's <c>MAX_CONNECTIONS</c>.</summary>
    public int MaxConnections { get; init; } = 4;

    /// <summary>nbdcopy's <c>--request-size</c> as virt-v2v sets it: the largest PUT of <see cref="V2vLikeClient.UploadImageAsync"/>.</summary>
    public int RequestSize { get; init; } = 4 * 1024 * 1024;

    /// <summary>Largest PATCH zero of <see cref="V2vLikeClient.UploadImageAsync"/> (76 MiB was observed).</summary>
    public long MaxZeroSize { get; init; } = 80L * 1024 * 1024;

    /// <summary>Requests <see cref="V2vLikeClient.UploadImageAsync"/> keeps in flight (the pool is the real limit).</summary>
    public int MaxRequestsInFlight { get; init; } = 4;

    /// <summary>Runs <c>qemu-img map --output=json</c> to find holes in UploadImageAsync; when false, or when
    /// qemu-img fails, holes are found only by scanning the data.</summary>
    public bool UseQemuImgMap { get; init; } = true;
}

/// <summary>What OPTIONS told the plugin (its <c>get_options</c>).</summary>
public sealed record ImageioServerOptions(bool CanFlush, bool CanZero, string? UnixSocket, int MaxReaders, int MaxWriters);

/// <summary>A request was answered with a status the plugin does not accept (its <c>request_failed</c>).</summary>
public sealed class V2vRequestFailedException(string message, int status, string body) : IOException(message)
{
    public int Status { get; } = status;

    public string Body { get; } = body;
}

/// <summary>
/// Reproduces the HTTP traffic of virt-v2v's nbdkit plugin <c>output/ovirt-upload-plugin.py</c>
/// (docs/virt-v2v-client.md): the same requests, heads, header order, JSON text, connection use and status
/// checks, over raw sockets so that nothing is added or reordered by an HTTP library.
/// </summary>
/// <remarks>
/// <list type="bullet">
/// <item>Open: OPTIONS on a connection of its own, which is then closed. "features" is mandatory; missing
/// max_readers/max_writers count as 1; 405 or 204 mean an old server (no flush, no zero, one connection).</item>
/// <item>A FIFO pool of min(max_readers, max_writers, 4) keep-alive connections, connected lazily on first use.
/// One request at a time per connection; a connection is reopened only after a response with
/// <c>Connection: close</c> (python http.client's auto_open). No retries.</item>
/// <item>Flush takes every connection out of the pool (waiting for requests in flight) and sends
/// PATCH {"op": "flush"} on each in turn.</item>
/// <item>A keeper flushes connections idle for longer than <see cref="V2vLikeClientOptions.IdleTimeout"/>; its
/// failure is stored and raised by every later request, like the plugin's <c>pool_error</c>.</item>
/// </list>
/// </remarks>
public sealed class V2vLikeClient : IAsyncDisposable
{
    private readonly V2vLikeClientOptions _options;
    private readonly Endpoint _endpoint;
    private readonly string _path;
    private readonly Channel<PoolItem> _pool;
    private readonly List<PoolItem> _items;
    private readonly CancellationTokenSource _done = new();
    private readonly Task _keeper;
    private volatile Exception? _poolError;

    private V2vLikeClient(V2vLikeClientOptions options, Endpoint endpoint, string path, ImageioServerOptions serverOptions)
    {
        _options = options;
        _endpoint = endpoint;
        _path = path;
        ServerOptions = serverOptions;
        PoolSize = Math.Min(Math.Min(serverOptions.MaxReaders, serverOptions.MaxWriters), options.MaxConnections);

        var poolEndpoint = options.IsOvirtHost && serverOptions.UnixSocket is { } unixSocket
            ? endpoint with { UnixSocket = unixSocket }
            : endpoint;
        _pool = Channel.CreateUnbounded<PoolItem>(); // FIFO, like queue.Queue
        _items = [.. Enumerable.Range(0, PoolSize).Select(_ => new PoolItem(new HttpConnection(poolEndpoint)))];
        foreach (var item in _items)
        {
            _pool.Writer.TryWrite(item);
        }

        _keeper = Task.Run(PoolKeeperAsync);
    }

    /// <summary>What the server's OPTIONS reply said.</summary>
    public ImageioServerOptions ServerOptions { get; }

    /// <summary>Connections in the pool.</summary>
    public int PoolSize { get; }

    /// <summary>Sends OPTIONS on its own connection, closes it, and prepares the pool (plugin <c>after_fork</c>).</summary>
    public static async Task<V2vLikeClient> OpenAsync(Uri imageUrl, V2vLikeClientOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(imageUrl);
        options ??= new V2vLikeClientOptions();
        if (imageUrl.Scheme is not ("http" or "https"))
        {
            throw new ArgumentException($"unknown URL scheme ({imageUrl.Scheme})", nameof(imageUrl));
        }

        var endpoint = new Endpoint(imageUrl, options, UnixSocket: null);
        // url.path only: the plugin drops any query string.
        var path = imageUrl.AbsolutePath;

        await using var http = new HttpConnection(endpoint);
        var response = await http.SendAsync("OPTIONS", path, [], ReadOnlyMemory<byte>.Empty, cancellationToken);
        ImageioServerOptions serverOptions;
        if (response.Status == 200)
        {
            using var json = JsonDocument.Parse(response.Body);
            var root = json.RootElement;
            // KeyError in the plugin when "features" is missing.
            var features = root.GetProperty("features").EnumerateArray().Select(f => f.GetString()).ToList();
            serverOptions = new ImageioServerOptions(
                features.Contains("flush"),
                features.Contains("zero"),
                root.TryGetProperty("unix_socket", out var unixSocket) && unixSocket.ValueKind == JsonValueKind.String ? unixSocket.GetString() : null,
                root.TryGetProperty("max_readers", out var maxReaders) ? maxReaders.GetInt32() : 1,
                root.TryGetProperty("max_writers", out var maxWriters) ? maxWriters.GetInt32() : 1);
        }
        else if (response.Status is 405 or 204)
        {
            serverOptions = new ImageioServerOptions(false, false, null, 1, 1);
        }
        else
        {
            throw new V2vRequestFailedException($"could not use OPTIONS request: {response.Status}: {response.Reason}", response.Status, response.BodyText);
        }

        return new V2vLikeClient(options, endpoint, path, serverOptions);
    }

    /// <summary>Plugin <c>pwrite</c>: <c>PUT path?flush=y|n</c> with Content-Range and Content-Length.</summary>
    public async Task PwriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfZero(data.Length);
        var flush = ServerOptions.CanFlush && fua ? "y" : "n";
        var response = await WithConnectionAsync(http => http.SendAsync(
            "PUT",
            $"{_path}?flush={flush}",
            [("Content-Range", $"bytes {offset}-{offset + data.Length - 1}/*"), ("Content-Length", Invariant(data.Length))],
            data,
            cancellationToken), cancellationToken);
        ThrowUnless(response, 200, $"could not write sector offset {offset} size {data.Length}");
    }

    /// <summary>Plugin <c>zero</c>: PATCH {"op": "zero", ...}, or PUT of zeroes when the server lacks "zero".</summary>
    public async Task ZeroAsync(long offset, long length, bool fua = false, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        if (!ServerOptions.CanZero)
        {
            await EmulateZeroAsync(offset, length, fua, cancellationToken);
            return;
        }

        var flush = ServerOptions.CanFlush && fua;
        var body = JsonBody($"{{\"op\": \"zero\", \"offset\": {offset}, \"size\": {length}, \"flush\": {(flush ? "true" : "false")}}}");
        var response = await WithConnectionAsync(http => http.SendAsync(
            "PATCH",
            _path,
            [("Content-Type", "application/json"), ("Content-Length", Invariant(body.Length))],
            body,
            cancellationToken), cancellationToken);
        ThrowUnless(response, 200, $"could not zero sector offset {offset} size {length}");
    }

    /// <summary>Plugin <c>flush</c>: waits for every request in flight by taking all connections, then sends
    /// PATCH {"op": "flush"} on each of them in turn.</summary>
    public async Task FlushAsync(CancellationToken cancellationToken = default)
    {
        ThrowPoolError();
        var locked = new List<PoolItem>();
        try
        {
            while (locked.Count < PoolSize)
            {
                locked.Add(await _pool.Reader.ReadAsync(cancellationToken));
            }

            foreach (var item in locked)
            {
                await SendFlushAsync(item.Http, cancellationToken);
                item.LastUsed = _options.TimeProvider.GetTimestamp();
            }
        }
        finally
        {
            foreach (var item in locked)
            {
                _pool.Writer.TryWrite(item);
            }
        }
    }

    /// <summary>Plugin <c>pread</c>: GET with <c>Range: bytes=A-B</c>; only 206 with the exact Content-Length.</summary>
    public async Task PreadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfZero(buffer.Length);
        var count = buffer.Length;
        var response = await WithConnectionAsync(http => http.SendAsync(
            "GET",
            _path,
            [("Range", $"bytes={offset}-{offset + count - 1}")],
            ReadOnlyMemory<byte>.Empty,
            cancellationToken), cancellationToken);
        ThrowUnless(response, 206, $"could not read sector offset {offset} size {count}");
        if (response.ContentLength != count)
        {
            throw new V2vRequestFailedException($"unexpected Content-Length offset {offset} size {count} got {response.ContentLength}", response.Status, response.BodyText);
        }

        if (response.Body.Length < count)
        {
            throw new V2vRequestFailedException($"short read offset {offset} size {count} got {response.Body.Length}", response.Status, response.BodyText);
        }

        response.Body.AsMemory(0, count).CopyTo(buffer);
    }

    /// <summary>
    /// Uploads a raw image the way virt-v2v's <c>nbdcopy --request-size=4M --flush</c> drives the plugin: holes
    /// (from <c>qemu-img map</c>) and all-zero requests become PATCH zero, everything else PUTs of at most
    /// <see cref="V2vLikeClientOptions.RequestSize"/>, several in flight; then one flush.
    /// </summary>
    public async Task UploadImageAsync(string imagePath, CancellationToken cancellationToken = default)
    {
        var size = new FileInfo(imagePath).Length;
        var extents = (_options.UseQemuImgMap ? await QemuImgMapAsync(imagePath, cancellationToken) : null)
            ?? [(0L, size, false)];

        using var inFlight = new SemaphoreSlim(_options.MaxRequestsInFlight);
        var requests = new List<Task>();
        await using var file = new FileStream(imagePath, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.Asynchronous);

        // Zero ranges are merged until a data request or the zero size limit ends them.
        long zeroStart = 0, zeroLength = 0;

        async Task StartAsync(Func<Task> send)
        {
            await inFlight.WaitAsync(cancellationToken);
            requests.Add(Task.Run(async () =>
            {
                try
                {
                    await send();
                }
                finally
                {
                    inFlight.Release();
                }
            }, cancellationToken));
        }

        async Task EndZeroRunAsync()
        {
            while (zeroLength > 0)
            {
                var (start, length) = (zeroStart, Math.Min(zeroLength, _options.MaxZeroSize));
                await StartAsync(() => ZeroAsync(start, length, cancellationToken: cancellationToken));
                zeroStart += length;
                zeroLength -= length;
            }
        }

        void AddZero(long start, long length)
        {
            if (zeroLength == 0)
            {
                zeroStart = start;
            }

            zeroLength += length;
        }

        foreach (var (start, extentLength, zero) in extents)
        {
            // qemu-img reports raw files in whole sectors, so the last extent may reach past the end.
            var length = Math.Min(extentLength, size - start);
            if (length <= 0)
            {
                continue;
            }

            if (zero)
            {
                AddZero(start, length);
                continue;
            }

            for (var offset = start; offset < start + length; offset += _options.RequestSize)
            {
                var count = (int)Math.Min(_options.RequestSize, start + length - offset);
                var buffer = new byte[count];
                await RandomAccess.ReadAsync(file.SafeFileHandle, buffer, offset, cancellationToken);
                if (!buffer.AsSpan().ContainsAnyExcept((byte)0))
                {
                    AddZero(offset, count);
                    continue;
                }

                await EndZeroRunAsync();
                var chunkOffset = offset;
                await StartAsync(() => PwriteAsync(chunkOffset, buffer, cancellationToken: cancellationToken));
            }
        }

        await EndZeroRunAsync();
        await Task.WhenAll(requests);
        await FlushAsync(cancellationToken);
    }

    /// <summary>Plugin <c>cleanup</c>: waits for all connections and closes them; sends nothing.</summary>
    public async ValueTask DisposeAsync()
    {
        await _done.CancelAsync();
        await _keeper;
        for (var taken = 0; taken < PoolSize; taken++)
        {
            var item = await _pool.Reader.ReadAsync();
            await item.Http.DisposeAsync();
        }

        _done.Dispose();
    }

    private async Task<HttpResponse> WithConnectionAsync(Func<HttpConnection, Task<HttpResponse>> request, CancellationToken cancellationToken)
    {
        ThrowPoolError();
        var item = await _pool.Reader.ReadAsync(cancellationToken);
        try
        {
            return await request(item.Http);
        }
        finally
        {
            item.LastUsed = _options.TimeProvider.GetTimestamp();
            _pool.Writer.TryWrite(item);
        }
    }

    private async Task EmulateZeroAsync(long offset, long length, bool fua, CancellationToken cancellationToken)
    {
        var flush = ServerOptions.CanFlush && fua ? "y" : "n";
        var response = await WithConnectionAsync(http => http.SendAsync(
            "PUT",
            $"{_path}?flush={flush}",
            [("Content-Range", $"bytes {offset}-{offset + length - 1}/*"), ("Content-Length", Invariant(length))],
            new ZeroBody(length),
            cancellationToken), cancellationToken);
        ThrowUnless(response, 200, $"could not write zeroes offset {offset} size {length}");
    }

    private async Task SendFlushAsync(HttpConnection http, CancellationToken cancellationToken)
    {
        var body = JsonBody("{\"op\": \"flush\"}");
        var response = await http.SendAsync(
            "PATCH",
            _path,
            [("Content-Type", "application/json"), ("Content-Length", Invariant(body.Length))],
            body,
            cancellationToken);
        ThrowUnless(response, 200, "could not flush");
    }

    private async Task PoolKeeperAsync()
    {
        var interval = _options.IdleTimeout / 2;
        while (!_done.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(interval, _done.Token);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            var idle = new List<PoolItem>();
            while (_pool.Reader.TryRead(out var item))
            {
                idle.Add(item);
            }

            var now = _options.TimeProvider.GetTimestamp();
            foreach (var item in idle)
            {
                if (item.LastUsed is { } lastUsed && _options.TimeProvider.GetElapsedTime(lastUsed, now) > _options.IdleTimeout)
                {
                    try
                    {
                        await SendFlushAsync(item.Http, _done.Token);
                        item.LastUsed = now;
                    }
                    catch (Exception e)
                    {
                        // Reported by the next request, as the plugin does.
                        _poolError = e;
                        item.LastUsed = null;
                    }
                }

                _pool.Writer.TryWrite(item);
            }
        }
    }

    private void ThrowPoolError()
    {
        if (_poolError is { } error)
        {
            throw new IOException($"pool keeper failed: {error.Message}", error);
        }
    }

    private static void ThrowUnless(HttpResponse response, int expected, string message)
    {
        if (response.Status != expected)
        {
            var body = response.BodyText;
            throw new V2vRequestFailedException($"{message}: {response.Status} {response.Reason}: {body[..Math.Min(200, body.Length)]}", response.Status, body);
        }
    }

    private static async Task<List<(long Start, long Length, bool Zero)>?> QemuImgMapAsync(string imagePath, CancellationToken cancellationToken)
    {
        try
        {
            using var process = Process.Start(new ProcessStartInfo("qemu-img", ["map", "--output=json", "-f", "raw", imagePath])
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            })!;
            var output = process.StandardOutput.ReadToEndAsync(cancellationToken);
            _ = process.StandardError.ReadToEndAsync(cancellationToken);
            await process.WaitForExitAsync(cancellationToken);
            if (process.ExitCode != 0)
            {
                return null;
            }

            using var json = JsonDocument.Parse(await output);
            return [.. json.RootElement.EnumerateArray().Select(e => (
                e.GetProperty("start").GetInt64(),
                e.GetProperty("length").GetInt64(),
                e.GetProperty("zero").GetBoolean() && !e.GetProperty("data").GetBoolean()))];
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null; // qemu-img is not installed
        }
    }

    // json.dumps(...).encode(): ASCII, ", " and ": " separators.
    private static byte[] JsonBody(string json) => Encoding.ASCII.GetBytes(json);

    private static string Invariant(long value) => value.ToString(CultureInfo.InvariantCulture);

    private sealed class PoolItem(HttpConnection http)
    {
        public HttpConnection Http { get; } = http;

        /// <summary>TimeProvider timestamp of the last request; null until first used, as in the plugin.</summary>
        public long? LastUsed { get; set; }
    }

    /// <summary>Where connections go: the URL's host and port (TLS for https), or a unix socket.</summary>
    internal sealed record Endpoint(Uri Url, V2vLikeClientOptions Options, string? UnixSocket)
    {
        /// <summary>The Host header http.client sends: "localhost" on a unix socket, else host[:port] with the
        /// port only when it is not the scheme's default.</summary>
        public string HostHeader => UnixSocket is not null ? "localhost"
            : Url.IsDefaultPort ? Url.Host
            : $"{Url.Host}:{Url.Port}";
    }

    /// <summary>A body of N zero bytes streamed in 128 KiB writes (plugin <c>emulate_zero</c>).</summary>
    internal sealed record ZeroBody(long Length);

    internal sealed record HttpResponse(int Status, string Reason, IReadOnlyList<(string Name, string Value)> Headers, byte[] Body)
    {
        public string BodyText => Encoding.UTF8.GetString(Body);

        public long? ContentLength => Header("content-length") is { } value ? long.Parse(value, CultureInfo.InvariantCulture) : null;

        public string? Header(string name) =>
            Headers.Where(h => h.Name.Equals(name, StringComparison.OrdinalIgnoreCase)).Select(h => h.Value).FirstOrDefault();
    }

    /// <summary>One HTTP/1.1 connection like python's http.client.HTTPConnection: connects on first use, sends
    /// <c>Host</c> and <c>Accept-Encoding: identity</c> before the caller's headers, and reconnects only after
    /// a response that closed the connection.</summary>
    internal sealed class HttpConnection(Endpoint endpoint) : IAsyncDisposable
    {
        private Socket? _socket;
        private Stream? _stream;
        private readonly byte[] _readBuffer = new byte[64 * 1024];
        private int _readStart;
        private int _readEnd;

        public async Task<HttpResponse> SendAsync(string method, string target, IReadOnlyList<(string Name, string Value)> headers, object body, CancellationToken cancellationToken)
        {
            if (_stream is null)
            {
                await ConnectAsync(cancellationToken);
            }

            var head = new StringBuilder();
            head.Append(CultureInfo.InvariantCulture, $"{method} {target} HTTP/1.1\r\n");
            head.Append(CultureInfo.InvariantCulture, $"Host: {endpoint.HostHeader}\r\n");
            head.Append("Accept-Encoding: identity\r\n");
            foreach (var (name, value) in headers)
            {
                head.Append(CultureInfo.InvariantCulture, $"{name}: {value}\r\n");
            }

            head.Append("\r\n");
            var stream = _stream!;
            try
            {
                var headBytes = Encoding.Latin1.GetBytes(head.ToString());
                if (body is byte[] { Length: > 0 } whole)
                {
                    // http.client's request(..., body=bytes) (the plugin's PATCH): head and body in one send(),
                    // "to avoid performance problems caused by the interaction between delayed ack and the
                    // Nagle algorithm" (http/client.py _send_output). Separate writes cost ~40 ms per PATCH.
                    await stream.WriteAsync((byte[])[.. headBytes, .. whole], cancellationToken);
                }
                else
                {
                    // putrequest/endheaders then send(body) (the plugin's PUT): two writes.
                    await stream.WriteAsync(headBytes, cancellationToken);
                }
                switch (body)
                {
                    case ReadOnlyMemory<byte> bytes when !bytes.IsEmpty:
                        await stream.WriteAsync(bytes, cancellationToken);
                        break;
                    case ZeroBody zero:
                        var zeroes = new byte[128 * 1024];
                        for (var left = zero.Length; left > 0; left -= zeroes.Length)
                        {
                            await stream.WriteAsync(zeroes.AsMemory(0, (int)Math.Min(left, zeroes.Length)), cancellationToken);
                        }

                        break;
                }

                await stream.FlushAsync(cancellationToken);
            }
            catch (IOException)
            {
                // BrokenPipeError while sending is swallowed so that the server's error response can be read.
            }

            var response = await ReadResponseAsync(method, cancellationToken);
            if (response.Header("connection")?.Equals("close", StringComparison.OrdinalIgnoreCase) == true)
            {
                await CloseAsync();
            }

            return response;
        }

        public ValueTask DisposeAsync() => CloseAsync();

        private async ValueTask CloseAsync()
        {
            if (_stream is not null)
            {
                await _stream.DisposeAsync();
            }

            _socket?.Dispose();
            _stream = null;
            _socket = null;
            _readStart = _readEnd = 0;
        }

        private async Task ConnectAsync(CancellationToken cancellationToken)
        {
            if (endpoint.UnixSocket is { } path)
            {
                _socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                await _socket.ConnectAsync(new UnixDomainSocketEndPoint(path), cancellationToken);
                _stream = new NetworkStream(_socket, ownsSocket: false);
                return;
            }

            _socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
            await _socket.ConnectAsync(new DnsEndPoint(endpoint.Url.IdnHost, endpoint.Url.Port), cancellationToken);
            // http.client sets no socket options; the kernel default (Nagle on) applies.
            _stream = new NetworkStream(_socket, ownsSocket: false);
            if (endpoint.Url.Scheme == "https")
            {
                var ssl = new SslStream(_stream, leaveInnerStreamOpen: false);
                await ssl.AuthenticateAsClientAsync(TlsOptions(), cancellationToken);
                _stream = ssl;
            }
        }

        private SslClientAuthenticationOptions TlsOptions()
        {
            var options = new SslClientAuthenticationOptions { TargetHost = endpoint.Url.IdnHost };
            if (endpoint.Options.Insecure)
            {
                // Deliberate: this is virt-v2v's default (insecure=true, ssl.CERT_NONE, no host name check).
#pragma warning disable CA5359
                options.RemoteCertificateValidationCallback = (_, _, _, _) => true;
#pragma warning restore CA5359
            }
            else if (endpoint.Options.CaFile is { } caFile)
            {
                var trust = new X509Certificate2Collection();
                trust.ImportFromPemFile(caFile);
                options.CertificateChainPolicy = new X509ChainPolicy
                {
                    TrustMode = X509ChainTrustMode.CustomRootTrust,
                    RevocationMode = X509RevocationMode.NoCheck,
                };
                options.CertificateChainPolicy.CustomTrustStore.AddRange(trust);
            }

            return options;
        }

        private async Task<HttpResponse> ReadResponseAsync(string method, CancellationToken cancellationToken)
        {
            while (true)
            {
                var statusLine = await ReadLineAsync(cancellationToken)
                    ?? throw new IOException("Remote end closed connection without response");
                var parts = statusLine.Split(' ', 3);
                if (parts.Length < 2 || !parts[0].StartsWith("HTTP/", StringComparison.Ordinal) || !int.TryParse(parts[1], CultureInfo.InvariantCulture, out var status))
                {
                    throw new IOException($"bad status line '{statusLine}'");
                }

                var headers = new List<(string, string)>();
                while (await ReadLineAsync(cancellationToken) is { Length: > 0 } line)
                {
                    var colon = line.IndexOf(':', StringComparison.Ordinal);
                    headers.Add((line[..colon].Trim(), line[(colon + 1)..].Trim()));
                }

                if (status is >= 100 and < 200)
                {
                    continue; // interim response (100 Continue); http.client skips them
                }

                var response = new HttpResponse(status, parts.Length > 2 ? parts[2] : "", headers, []);
                byte[] body;
                if (method == "HEAD" || status is 204 or 304)
                {
                    body = [];
                }
                else if (response.Header("transfer-encoding")?.Contains("chunked", StringComparison.OrdinalIgnoreCase) == true)
                {
                    body = await ReadChunkedAsync(cancellationToken);
                }
                else if (response.ContentLength is { } length)
                {
                    body = new byte[length];
                    await ReadExactlyAsync(body, cancellationToken);
                }
                else
                {
                    body = await ReadToEndAsync(cancellationToken);
                    await CloseAsync();
                }

                return response with { Body = body };
            }
        }

        private async Task<byte[]> ReadChunkedAsync(CancellationToken cancellationToken)
        {
            using var body = new MemoryStream();
            while (true)
            {
                var sizeLine = await ReadLineAsync(cancellationToken) ?? throw new IOException("EOF in chunked body");
                var size = int.Parse(sizeLine.Split(';')[0].Trim(), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                if (size == 0)
                {
                    while (await ReadLineAsync(cancellationToken) is { Length: > 0 })
                    {
                        // trailers
                    }

                    return body.ToArray();
                }

                var chunk = new byte[size];
                await ReadExactlyAsync(chunk, cancellationToken);
                body.Write(chunk);
                await ReadLineAsync(cancellationToken);
            }
        }

        private async Task<byte[]> ReadToEndAsync(CancellationToken cancellationToken)
        {
            using var body = new MemoryStream();
            body.Write(_readBuffer, _readStart, _readEnd - _readStart);
            _readStart = _readEnd = 0;
            await _stream!.CopyToAsync(body, cancellationToken);
            return body.ToArray();
        }

        private async Task ReadExactlyAsync(Memory<byte> destination, CancellationToken cancellationToken)
        {
            var buffered = Math.Min(destination.Length, _readEnd - _readStart);
            _readBuffer.AsMemory(_readStart, buffered).CopyTo(destination);
            _readStart += buffered;
            if (buffered < destination.Length)
            {
                await _stream!.ReadExactlyAsync(destination[buffered..], cancellationToken);
            }
        }

        private async Task<string?> ReadLineAsync(CancellationToken cancellationToken)
        {
            var line = new List<byte>();
            while (true)
            {
                if (_readStart == _readEnd)
                {
                    _readStart = 0;
                    _readEnd = await _stream!.ReadAsync(_readBuffer, cancellationToken);
                    if (_readEnd == 0)
                    {
                        return line.Count == 0 ? null : throw new IOException("EOF in the middle of a line");
                    }
                }

                var newline = Array.IndexOf(_readBuffer, (byte)'\n', _readStart, _readEnd - _readStart);
                var end = newline < 0 ? _readEnd : newline;
                line.AddRange(_readBuffer.AsSpan(_readStart, end - _readStart));
                if (newline >= 0)
                {
                    _readStart = newline + 1;
                    if (line.Count > 0 && line[^1] == '\r')
                    {
                        line.RemoveAt(line.Count - 1);
                    }

                    return Encoding.Latin1.GetString([.. line]);
                }

                _readStart = _readEnd;
            }
        }
    }
}
