using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json;

namespace ImageioProxy.Client;

/// <summary>imageio's HTTP API for one ticket URL (<c>https://host:port/images/TICKET</c>): OPTIONS, ranged
/// GET, PUT with Content-Range, PATCH zero/flush, extents and checksum. Thread-safe: workers share it and
/// the handler keeps up to <see cref="ImageioClientOptions.MaxWorkers"/> connections alive. Every failure
/// is an <see cref="ImageioClientException"/>.</summary>
public sealed class ImageioHttpClient : IDisposable
{
    private readonly ImageioClientOptions _options;
    private HttpClient _http;
    private Uri _imageUri;

    private ImageioHttpClient(Uri imageUri, HttpClient http, ImageioClientOptions options, ImageioServerInfo server)
    {
        _imageUri = imageUri;
        _http = http;
        _options = options;
        Server = server;
        Url = imageUri;
    }

    /// <summary>The ticket URL as given.</summary>
    public Uri Url { get; }

    /// <summary>What OPTIONS said.</summary>
    public ImageioServerInfo Server { get; private set; }

    /// <summary>True after switching to the server's unix socket.</summary>
    public bool UsesUnixSocket { get; private set; }

    /// <summary>Sends OPTIONS to <paramref name="url"/> and, when the server runs on this host and offers a
    /// unix socket, switches to it (checked with a second OPTIONS; on failure stays on TCP with a warning).</summary>
    public static async Task<ImageioHttpClient> ConnectAsync(Uri url, ImageioClientOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(url);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (url.Scheme is not ("http" or "https"))
        {
            throw new ArgumentException($"'{url}' is not an http:// or https:// URL", nameof(url));
        }

        var tls = new CertificateCheck(options);
        var locality = new PeerLocality();
        var http = CreateHttpClient(CreateTcpHandler(options, tls, locality), options);
        var client = new ImageioHttpClient(url, http, options, null!);
        try
        {
            client.Server = await client.OptionsAsync(tls, cancellationToken).ConfigureAwait(false);
            if (options.UseUnixSocket && client.Server.UnixSocket is { Length: > 0 } socket && locality.IsLocal)
            {
                await client.TrySwitchToUnixSocketAsync(socket, cancellationToken).ConfigureAwait(false);
            }
            return client;
        }
        catch
        {
            client.Dispose();
            throw;
        }
    }

    /// <summary>PUT <paramref name="data"/> at <paramref name="offset"/> (<c>Content-Range: bytes a-b/*</c>,
    /// <c>?flush=n</c> when the server can flush, so that one flush at the end covers everything).</summary>
    public async Task PutAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        var uri = Server.CanFlush ? ImageUri("?flush=n") : ImageUri();
        using var response = await SendAsync(() =>
        {
            var content = new ReadOnlyMemoryContent(data);
            content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
            content.Headers.ContentRange = new ContentRangeHeaderValue(offset, offset + data.Length - 1);
            return new HttpRequestMessage(HttpMethod.Put, uri) { Content = content };
        }, $"PUT {Range(offset, data.Length)}", cancellationToken).ConfigureAwait(false);
    }

    /// <summary>PATCH zero: the server writes zeroes (or punches a hole on a sparse ticket).</summary>
    public Task ZeroAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        PatchAsync(string.Create(CultureInfo.InvariantCulture, $$"""{"op":"zero","offset":{{offset}},"size":{{length}},"flush":false}"""),
            $"PATCH zero {Range(offset, length)}", cancellationToken);

    /// <summary>PATCH flush: everything written before is on stable storage when this returns.</summary>
    public Task FlushAsync(CancellationToken cancellationToken = default) =>
        PatchAsync("""{"op":"flush"}""", "PATCH flush", cancellationToken);

    /// <summary>GET with <c>Range</c>; fills <paramref name="buffer"/> exactly.</summary>
    public async Task ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        var what = $"GET {Range(offset, buffer.Length)}";
        var uri = ImageUri();
        using var response = await SendAsync(() =>
        {
            var request = new HttpRequestMessage(HttpMethod.Get, uri);
            request.Headers.Range = new RangeHeaderValue(offset, offset + buffer.Length - 1);
            return request;
        }, what, cancellationToken, HttpCompletionOption.ResponseHeadersRead).ConfigureAwait(false);
        if (response.StatusCode != HttpStatusCode.PartialContent || response.Content.Headers.ContentLength != buffer.Length)
        {
            throw new ImageioClientException(ImageioErrorKind.Protocol,
                $"{what}: expected 206 with {buffer.Length} bytes, got {(int)response.StatusCode} with {response.Content.Headers.ContentLength?.ToString(CultureInfo.InvariantCulture) ?? "no"} Content-Length",
                (int)response.StatusCode);
        }
        try
        {
            await using var body = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
            await body.ReadExactlyAsync(buffer, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or HttpRequestException)
        {
            throw ConnectionLost(what, e);
        }
    }

    /// <summary>The size of the image: the end of its last extent, or (without the extents feature) the total
    /// of a one-byte ranged GET's Content-Range.</summary>
    public async Task<long> GetSizeAsync(CancellationToken cancellationToken = default)
    {
        if (Server.CanExtents)
        {
            var extents = await GetExtentsAsync(cancellationToken).ConfigureAwait(false);
            return extents.Count == 0 ? 0 : extents[^1].End;
        }
        var uri = ImageUri();
        using var response = await SendAsync(() =>
        {
            var request = new HttpRequestMessage(HttpMethod.Get, uri);
            request.Headers.Range = new RangeHeaderValue(0, 0);
            return request;
        }, "GET bytes=0-0", cancellationToken, HttpCompletionOption.ResponseHeadersRead).ConfigureAwait(false);
        return response.Content.Headers.ContentRange?.Length
            ?? throw new ImageioClientException(ImageioErrorKind.Protocol, "the server supports neither extents nor Content-Range; cannot tell the image size");
    }

    /// <summary>GET /extents (zero context): the whole image, in order.</summary>
    public async Task<IReadOnlyList<ImageExtent>> GetExtentsAsync(CancellationToken cancellationToken = default)
    {
        var uri = ImageUri("/extents");
        var json = await SendForTextAsync(() => new HttpRequestMessage(HttpMethod.Get, uri), "GET extents", cancellationToken).ConfigureAwait(false);
        try
        {
            using var document = JsonDocument.Parse(json);
            var extents = new List<ImageExtent>();
            foreach (var e in document.RootElement.EnumerateArray())
            {
                extents.Add(new ImageExtent(
                    e.GetProperty("start").GetInt64(),
                    e.GetProperty("length").GetInt64(),
                    e.GetProperty("zero").GetBoolean(),
                    e.TryGetProperty("hole", out var hole) && hole.ValueKind == JsonValueKind.True));
            }
            return extents;
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or KeyNotFoundException or FormatException)
        {
            throw new ImageioClientException(ImageioErrorKind.Protocol, $"GET extents: not an imageio extents list: {e.Message}", inner: e);
        }
    }

    /// <summary>GET /checksum?algorithm=&amp;block_size=.</summary>
    public async Task<ImageChecksum> GetChecksumAsync(string algorithm, int blockSize, CancellationToken cancellationToken = default)
    {
        var query = string.Create(CultureInfo.InvariantCulture, $"/checksum?algorithm={Uri.EscapeDataString(algorithm)}&block_size={blockSize}");
        var uri = ImageUri(query);
        var json = await SendForTextAsync(() => new HttpRequestMessage(HttpMethod.Get, uri), "GET checksum", cancellationToken).ConfigureAwait(false);
        try
        {
            using var document = JsonDocument.Parse(json);
            var root = document.RootElement;
            return new ImageChecksum(root.GetProperty("algorithm").GetString()!, root.GetProperty("block_size").GetInt32(), root.GetProperty("checksum").GetString()!);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or KeyNotFoundException or FormatException)
        {
            throw new ImageioClientException(ImageioErrorKind.Protocol, $"GET checksum: not an imageio checksum reply: {e.Message}", inner: e);
        }
    }

    public void Dispose() => _http.Dispose();

    private async Task<ImageioServerInfo> OptionsAsync(CertificateCheck? tls, CancellationToken cancellationToken)
    {
        var uri = ImageUri();
        using var response = await SendAsync(() => new HttpRequestMessage(HttpMethod.Options, uri), "OPTIONS", cancellationToken, tls: tls).ConfigureAwait(false);
        var json = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var allow = response.Content.Headers.Allow.Count > 0 ? response.Content.Headers.Allow
                : response.Headers.TryGetValues("Allow", out var values) ? values : [];
            return ImageioServerInfo.Parse(json, allow);
        }
        catch (JsonException e)
        {
            throw new ImageioClientException(ImageioErrorKind.Protocol,
                $"OPTIONS {Url}: the reply is not imageio's JSON ({e.Message}); is this an imageio server?", (int)response.StatusCode, e);
        }
    }

    private async Task TrySwitchToUnixSocketAsync(string socket, CancellationToken cancellationToken)
    {
        // A path socket that does not exist here belongs to another host with the same address (NAT, containers).
        if (!socket.StartsWith('\0') && !File.Exists(socket))
        {
            return;
        }
        var unixHttp = CreateHttpClient(CreateUnixHandler(socket, _options), _options);
        var tcpHttp = _http;
        var tcpUri = _imageUri;
        _http = unixHttp;
        _imageUri = new UriBuilder(Url) { Scheme = "http", Host = "localhost", Port = 80 }.Uri;
        try
        {
            Server = await OptionsAsync(null, cancellationToken).ConfigureAwait(false);
            UsesUnixSocket = true;
            tcpHttp.Dispose();
        }
        catch (ImageioClientException e) when (!cancellationToken.IsCancellationRequested)
        {
            _options.Warning?.Invoke($"cannot use the server's unix socket ({e.Message}); staying on {tcpUri.Scheme}");
            _http = tcpHttp;
            _imageUri = tcpUri;
            unixHttp.Dispose();
        }
    }

    private async Task PatchAsync(string json, string what, CancellationToken cancellationToken)
    {
        var uri = ImageUri();
        using var response = await SendAsync(() => new HttpRequestMessage(HttpMethod.Patch, uri)
        {
            Content = new StringContent(json, Encoding.UTF8, "application/json"),
        }, what, cancellationToken).ConfigureAwait(false);
    }

    private async Task<string> SendForTextAsync(Func<HttpRequestMessage> request, string what, CancellationToken cancellationToken)
    {
        using var response = await SendAsync(request, what, cancellationToken, HttpCompletionOption.ResponseHeadersRead).ConfigureAwait(false);
        try
        {
            return await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or HttpRequestException)
        {
            throw ConnectionLost(what, e);
        }
    }

    /// <summary>Sends and maps every failure to an <see cref="ImageioClientException"/>; returns only
    /// successful responses (the caller disposes them). A request whose connection broke before its reply
    /// (a kept-alive connection the server closed, a reset or broken pipe while sending) is sent again, up to
    /// <see cref="SendAttempts"/> times: every request of this API is idempotent (PUT and PATCH zero of a
    /// range write the same bytes again, flush and GET repeat harmlessly).</summary>
    private async Task<HttpResponseMessage> SendAsync(Func<HttpRequestMessage> createRequest, string what, CancellationToken cancellationToken,
        HttpCompletionOption completion = HttpCompletionOption.ResponseContentRead, CertificateCheck? tls = null)
    {
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                return await SendOnceAsync(createRequest, what, completion, tls, cancellationToken).ConfigureAwait(false);
            }
            catch (ImageioClientException e) when (attempt < SendAttempts && e.Kind == ImageioErrorKind.ConnectionLost && e.InnerException is HttpRequestException)
            {
                Interlocked.Increment(ref _retries);
                await Task.Delay(TimeSpan.FromMilliseconds(100 * attempt), cancellationToken).ConfigureAwait(false);
            }
        }
    }

    private const int SendAttempts = 3;
    private int _retries;

    /// <summary>Requests sent again after their connection broke.</summary>
    public int Retries => Volatile.Read(ref _retries);

    private async Task<HttpResponseMessage> SendOnceAsync(Func<HttpRequestMessage> createRequest, string what,
        HttpCompletionOption completion, CertificateCheck? tls, CancellationToken cancellationToken)
    {
        HttpResponseMessage response;
        using var request = createRequest();
        try
        {
            response = await _http.SendAsync(request, completion, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException e) when (!cancellationToken.IsCancellationRequested)
        {
            throw new ImageioClientException(ImageioErrorKind.ConnectionLost,
                $"{what}: no reply from {Url.Authority} within {_options.RequestTimeout.TotalSeconds:0} s", inner: e);
        }
        catch (HttpRequestException e) when (e.InnerException is AuthenticationException || tls?.Failure is not null)
        {
            throw new ImageioClientException(ImageioErrorKind.Certificate,
                $"TLS with {Url.Authority} failed: {tls?.Failure ?? e.InnerException?.Message ?? e.Message}. " +
                (_options.CaFile is null
                    ? "Give the CA certificate that signed the server's certificate with --cafile FILE (or --insecure to skip verification, for testing only)."
                    : $"Is {_options.CaFile} the CA that signed the server's certificate, and does the URL's host name match it?"),
                inner: e);
        }
        catch (HttpRequestException e)
        {
            throw ConnectionLost(what, e);
        }

        if (response.IsSuccessStatusCode)
        {
            return response;
        }
        using (response)
        {
            var status = (int)response.StatusCode;
            string body;
            try
            {
                body = (await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false)).Trim();
            }
            catch (Exception e) when (e is IOException or HttpRequestException)
            {
                body = "";
            }
            if (body.Length > 500)
            {
                body = body[..500] + "…";
            }
            throw status switch
            {
                403 => new ImageioClientException(ImageioErrorKind.Forbidden,
                    $"{what}: the server refused the ticket (403 {body}). The ticket may not exist, may have expired or been canceled, or may not allow this operation.", status),
                416 => new ImageioClientException(ImageioErrorKind.ImageTooSmall,
                    $"{what}: outside the image (416 {body}); the target image is too small.", status),
                _ => new ImageioClientException(ImageioErrorKind.Server, $"{what}: the server failed with {status} {response.ReasonPhrase}: {body}", status),
            };
        }
    }

    private ImageioClientException ConnectionLost(string what, Exception e) =>
        new(ImageioErrorKind.ConnectionLost, $"{what}: connection to {Url.Authority} failed or was lost: {Innermost(e).Message}", inner: e);

    private static Exception Innermost(Exception e)
    {
        while (e.InnerException is not null)
        {
            e = e.InnerException;
        }
        return e;
    }

    private Uri ImageUri(string suffix = "")
    {
        // suffix is "/extents", "/checksum?…" or "?flush=n"; the ticket URL has no query of its own.
        var path = _imageUri.GetLeftPart(UriPartial.Path).TrimEnd('/');
        return new Uri(path + suffix);
    }

    private static string Range(long offset, long length) =>
        string.Create(CultureInfo.InvariantCulture, $"[{offset}, {offset + length})");

    private static HttpClient CreateHttpClient(SocketsHttpHandler handler, ImageioClientOptions options) =>
        new(handler) { Timeout = options.RequestTimeout };

    private static SocketsHttpHandler CreateTcpHandler(ImageioClientOptions options, CertificateCheck tls, PeerLocality locality)
    {
        var handler = BaseHandler(options);
        handler.SslOptions = new SslClientAuthenticationOptions { RemoteCertificateValidationCallback = tls.Validate };
        handler.ConnectCallback = async (context, cancellationToken) =>
        {
            var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try
            {
                await socket.ConnectAsync(context.DnsEndPoint, cancellationToken).ConfigureAwait(false);
                locality.Record(socket);
                return new NetworkStream(socket, ownsSocket: true);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        };
        return handler;
    }

    private static SocketsHttpHandler CreateUnixHandler(string path, ImageioClientOptions options)
    {
        var handler = BaseHandler(options);
        handler.ConnectCallback = async (_, cancellationToken) =>
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                // UnixDomainSocketEndPoint takes abstract names with their leading '\0', as imageio reports them.
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), cancellationToken).ConfigureAwait(false);
                return new NetworkStream(socket, ownsSocket: true);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        };
        return handler;
    }

    private static SocketsHttpHandler BaseHandler(ImageioClientOptions options) => new()
    {
        // One connection per worker, plus one for the control requests (OPTIONS, flush) of the main loop.
        MaxConnectionsPerServer = options.MaxWorkers + 1,
        ConnectTimeout = TimeSpan.FromSeconds(30),
        PooledConnectionIdleTimeout = TimeSpan.FromMinutes(1),
        AutomaticDecompression = DecompressionMethods.None,
        UseProxy = false,
        UseCookies = false,
        // imageio's server answers 100-continue before authorizing; a 403 would come after the body anyway.
        Expect100ContinueTimeout = TimeSpan.Zero,
    };

    /// <summary>imageio's is_local: the connection's local and peer addresses are the same address.</summary>
    private sealed class PeerLocality
    {
        private volatile bool _isLocal;

        public bool IsLocal => _isLocal;

        public void Record(Socket socket)
        {
            if (socket.LocalEndPoint is IPEndPoint local && socket.RemoteEndPoint is IPEndPoint remote)
            {
                _isLocal = local.Address.Equals(remote.Address);
            }
        }
    }

    /// <summary>Verifies the server certificate against a CA file, the system store, or not at all; keeps
    /// why it failed for the error message.</summary>
    private sealed class CertificateCheck
    {
        private readonly ImageioClientOptions _options;
        private readonly X509Certificate2Collection? _roots;

        public CertificateCheck(ImageioClientOptions options)
        {
            _options = options;
            if (options.CaFile is { } caFile && !options.Insecure)
            {
                if (!File.Exists(caFile))
                {
                    throw new ImageioClientException(ImageioErrorKind.Certificate, $"CA file {caFile} does not exist");
                }
                _roots = [];
                try
                {
                    _roots.ImportFromPemFile(caFile);
                }
                catch (Exception e) when (e is System.Security.Cryptography.CryptographicException or IOException)
                {
                    throw new ImageioClientException(ImageioErrorKind.Certificate, $"cannot read CA file {caFile}: {e.Message}", inner: e);
                }
                if (_roots.Count == 0)
                {
                    throw new ImageioClientException(ImageioErrorKind.Certificate, $"CA file {caFile} holds no PEM certificate");
                }
            }
        }

        public string? Failure { get; private set; }

        public bool Validate(object sender, X509Certificate? certificate, X509Chain? chain, SslPolicyErrors errors)
        {
            if (_options.Insecure)
            {
                return true;
            }
            if (certificate is null)
            {
                Failure = "the server sent no certificate";
                return false;
            }
            if ((errors & SslPolicyErrors.RemoteCertificateNameMismatch) != 0)
            {
                Failure = $"the server's certificate ({certificate.Subject}) does not name the host in the URL";
                return false;
            }
            if (_roots is null)
            {
                if (errors != SslPolicyErrors.None)
                {
                    Failure = $"the server's certificate ({certificate.Subject}, issued by {certificate.Issuer}) is not trusted by this system ({errors})";
                }
                return errors == SslPolicyErrors.None;
            }
            using var customChain = new X509Chain();
            customChain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
            customChain.ChainPolicy.CustomTrustStore.AddRange(_roots);
            customChain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
            using var serverCertificate = new X509Certificate2(certificate);
            if (customChain.Build(serverCertificate))
            {
                return true;
            }
            Failure = $"the server's certificate ({certificate.Subject}, issued by {certificate.Issuer}) is not signed by a CA in {_options.CaFile}: " +
                string.Join("; ", customChain.ChainStatus.Select(s => s.StatusInformation.Trim()).Where(s => s.Length > 0).Distinct());
            return false;
        }
    }
}
