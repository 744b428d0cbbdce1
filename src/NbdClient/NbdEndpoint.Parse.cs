using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace NbdClient;

// Parsing and formatting of NBD URIs (nbd-client-spec.md §11, NBD doc/uri.md) and of imageio's ticket
// URLs (imageio-api.md §5.1, ovirt_imageio/_internal/nbd.py). Parsed by hand: System.Uri would normalise
// "nbd://h//disk" and unescape in ways the NBD URI rules do not allow.
public sealed partial record NbdEndpoint
{
    /// <summary>The IANA port of NBD, used when a TCP URI has none.</summary>
    public const int DefaultPort = 10809;

    /// <summary>Longest export name the protocol allows, in UTF-8 bytes.</summary>
    public const int MaxExportNameBytes = 4096;

    private const string Forms = "expected nbd://HOST[:PORT]/[EXPORT], nbds://..., nbd+unix:///[EXPORT]?socket=PATH, nbds+unix://..., nbd:unix:/PATH[:exportname=NAME] or nbd:HOST:PORT[:exportname=NAME]";
    private const string ExportNameMarker = ":exportname=";

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Parses an NBD URI or an imageio <c>nbd:</c> URL; throws <see cref="FormatException"/> with the reason.</summary>
    /// <remarks>
    /// Accepted: <c>nbd://host[:port]/[export]</c> and <c>nbds://</c> (TLS required), IPv6 literals in [];
    /// <c>nbd+unix:///[export]?socket=PATH</c> and <c>nbds+unix://</c> (a TLS user name before @ is ignored);
    /// imageio's <c>nbd:unix:/PATH[:exportname=NAME]</c> and <c>nbd:HOST:PORT[:exportname=NAME]</c>.
    /// The export name is the URI path minus its leading '/', percent-decoded. Query parameters: socket,
    /// tls-hostname (sets <see cref="TlsHostname"/>), other tls-* (accepted and ignored: TLS material comes
    /// from <see cref="NbdTlsOptions"/>) and x-* (ignored); anything else is an error.
    /// </remarks>
    public static NbdEndpoint Parse(string uri)
        => TryParse(uri, out var endpoint, out var error) ? endpoint : throw new FormatException(error);

    /// <summary>Like <see cref="Parse"/>, returning false and a human-readable <paramref name="error"/> instead of throwing.</summary>
    public static bool TryParse(
        [NotNullWhen(true)] string? uri,
        [NotNullWhen(true)] out NbdEndpoint? endpoint,
        [NotNullWhen(false)] out string? error)
    {
        var reason = ParseCore(uri, out endpoint);
        error = reason is null ? null : $"invalid NBD URI '{Display(uri)}': {reason}";
        return reason is null;
    }

    /// <summary>The endpoint as an NBD URI that <see cref="Parse"/> reads back to an equal endpoint. It
    /// never contains secrets (a TLS user name given in the parsed URI is not kept).</summary>
    public override string ToString()
    {
        var scheme = RequireTls ? "nbds" : "nbd";
        var export = Escape(ExportName);
        switch (Address)
        {
            case UnixDomainSocketEndPoint unix:
                var socket = Escape(UnixSocketPath(unix));
                var hostname = TlsHostname is null ? "" : $"&tls-hostname={Escape(TlsHostname)}";
                return $"{scheme}+unix:///{export}?socket={socket}{hostname}";
            case DnsEndPoint dns:
                return $"{scheme}://{dns.Host}:{dns.Port}/{export}{TlsHostnameQuery(dns.Host)}";
            case IPEndPoint ip:
                var literal = ip.Address.ToString();
                var host = ip.AddressFamily == AddressFamily.InterNetworkV6
                    ? $"[{literal.Replace("%", "%25", StringComparison.Ordinal)}]"
                    : literal;
                return $"{scheme}://{host}:{ip.Port}/{export}{TlsHostnameQuery(literal)}";
            default:
                return $"{scheme}://{Address}/{export}";
        }
    }

    private string TlsHostnameQuery(string host)
        => TlsHostname is null || TlsHostname == host ? "" : $"?tls-hostname={Escape(TlsHostname)}";

    private static string? ParseCore(string? uri, out NbdEndpoint? endpoint)
    {
        endpoint = null;
        if (string.IsNullOrEmpty(uri))
        {
            return "the URI is empty";
        }

        if (uri.Any(char.IsControl))
        {
            return "it contains control characters";
        }

        var colon = uri.IndexOf(':', StringComparison.Ordinal);
        if (colon <= 0)
        {
            return $"no scheme; {Forms}";
        }

        var scheme = uri[..colon].ToLowerInvariant();
        var rest = uri[(colon + 1)..];
        var (unix, tls) = scheme switch
        {
            "nbd" => (false, false),
            "nbds" => (false, true),
            "nbd+unix" => (true, false),
            "nbds+unix" => (true, true),
            _ => (false, false),
        };
        if (scheme is "nbd+vsock" or "nbds+vsock")
        {
            return "vsock transports are not supported";
        }

        if (scheme is not ("nbd" or "nbds" or "nbd+unix" or "nbds+unix"))
        {
            return $"unknown scheme '{scheme}'; {Forms}";
        }

        if (!rest.StartsWith("//", StringComparison.Ordinal))
        {
            return scheme == "nbd"
                ? ParseImageio(rest, out endpoint)
                : $"expected '//' after '{scheme}:'";
        }

        // imageio's form takes the name verbatim, but in a URI whitespace must be percent-encoded.
        if (uri.Any(char.IsWhiteSpace))
        {
            return "it contains whitespace (percent-encode it as %20)";
        }

        var hierarchy = rest[2..];
        if (hierarchy.Contains('#', StringComparison.Ordinal))
        {
            return "a fragment ('#...') is not allowed";
        }

        string? query = null;
        var questionMark = hierarchy.IndexOf('?', StringComparison.Ordinal);
        if (questionMark >= 0)
        {
            query = hierarchy[(questionMark + 1)..];
            hierarchy = hierarchy[..questionMark];
        }

        var slash = hierarchy.IndexOf('/', StringComparison.Ordinal);
        var authority = slash >= 0 ? hierarchy[..slash] : hierarchy;
        var path = slash >= 0 ? hierarchy[slash..] : "";
        // userinfo is the TLS user name (PSK); we neither use nor keep it.
        var hostPort = authority[(authority.LastIndexOf('@') + 1)..];

        if (ParseQuery(query, out var socket, out var tlsHostname) is { } queryError)
        {
            return queryError;
        }

        if (DecodeExportName(path.Length > 0 ? path[1..] : "", out var export) is { } exportError)
        {
            return exportError;
        }

        if (unix)
        {
            if (hostPort.Length > 0)
            {
                return $"a unix-socket URI takes no host ('{hostPort}'); write {scheme}:///EXPORT?socket=PATH";
            }

            if (socket is null)
            {
                return $"{scheme} needs the socket path: ?socket=PATH";
            }

            if (CreateUnixEndPoint(socket, out var unixEndPoint) is { } socketError)
            {
                return socketError;
            }

            endpoint = new NbdEndpoint(unixEndPoint!, export, tls, tlsHostname);
            return null;
        }

        if (socket is not null)
        {
            return "socket= is only valid with nbd+unix:// and nbds+unix://";
        }

        if (ParseHostPort(hostPort, portRequired: false, out var address, out var host) is { } hostError)
        {
            return hostError;
        }

        endpoint = new NbdEndpoint(address!, export, tls, tlsHostname ?? host);
        return null;
    }

    // imageio: nbd:unix:/PATH[:exportname=NAME] and nbd:HOST:PORT[:exportname=NAME]. The name is taken
    // verbatim (imageio does not percent-decode it); a socket path cannot contain ':'.
    private static string? ParseImageio(string rest, out NbdEndpoint? endpoint)
    {
        endpoint = null;
        if (rest.IndexOfAny(['?', '#']) >= 0)
        {
            return "'?' and '#' are not allowed in imageio's nbd:unix:/PATH and nbd:HOST:PORT forms";
        }

        var marker = rest.IndexOf(ExportNameMarker, StringComparison.Ordinal);
        var address = marker >= 0 ? rest[..marker] : rest;
        var export = marker >= 0 ? rest[(marker + ExportNameMarker.Length)..] : "";
        if (ValidateExportName(export) is { } exportError)
        {
            return exportError;
        }

        if (address.StartsWith("unix:", StringComparison.Ordinal))
        {
            var socket = address["unix:".Length..];
            if (!socket.StartsWith('/'))
            {
                return $"nbd:unix: needs an absolute socket path, got '{socket}'";
            }

            if (socket.Contains(':', StringComparison.Ordinal))
            {
                return $"unexpected text after the socket path in '{socket}' (only ':exportname=NAME' may follow it)";
            }

            if (CreateUnixEndPoint(socket, out var unixEndPoint) is { } socketError)
            {
                return socketError;
            }

            endpoint = new NbdEndpoint(unixEndPoint!, export);
            return null;
        }

        if (address.Length == 0)
        {
            return $"nothing after 'nbd:'; {Forms}";
        }

        if (ParseHostPort(address, portRequired: true, out var tcp, out var host) is { } hostError)
        {
            return hostError;
        }

        endpoint = new NbdEndpoint(tcp!, export, RequireTls: false, TlsHostname: host);
        return null;
    }

    private static string? ParseQuery(string? query, out string? socket, out string? tlsHostname)
    {
        socket = null;
        tlsHostname = null;
        if (string.IsNullOrEmpty(query))
        {
            return null;
        }

        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var parameter in query.Split('&'))
        {
            if (parameter.Length == 0)
            {
                continue;
            }

            var equals = parameter.IndexOf('=', StringComparison.Ordinal);
            if (PercentDecode(equals >= 0 ? parameter[..equals] : parameter, out var key) is { } keyError)
            {
                return keyError;
            }

            if (PercentDecode(equals >= 0 ? parameter[(equals + 1)..] : "", out var value) is { } valueError)
            {
                return valueError;
            }

            if (!seen.Add(key!))
            {
                return $"query parameter '{key}' is given twice";
            }

            switch (key)
            {
                case "socket":
                    socket = value;
                    break;
                case "tls-hostname":
                    if (string.IsNullOrEmpty(value))
                    {
                        return "tls-hostname= is empty";
                    }

                    tlsHostname = value;
                    break;
                case var k when k!.StartsWith("tls-", StringComparison.Ordinal) || k.StartsWith("x-", StringComparison.Ordinal):
                    break;
                default:
                    return $"unknown query parameter '{key}' (understood: socket, tls-*, x-*)";
            }
        }

        return null;
    }

    private static string? ParseHostPort(string hostPort, bool portRequired, out EndPoint? address, out string? host)
    {
        address = null;
        host = null;
        string? portText = null;
        if (hostPort.StartsWith('['))
        {
            var close = hostPort.IndexOf(']', StringComparison.Ordinal);
            if (close < 0)
            {
                return $"unterminated IPv6 literal '{hostPort}'";
            }

            // RFC 6874: a zone id is written %25zone inside the brackets.
            var literal = hostPort[1..close].Replace("%25", "%", StringComparison.Ordinal);
            if (!IPAddress.TryParse(literal, out var ipv6) || ipv6.AddressFamily != AddressFamily.InterNetworkV6)
            {
                return $"'{hostPort[..(close + 1)]}' is not an IPv6 address";
            }

            var after = hostPort[(close + 1)..];
            if (after.Length > 0 && after[0] != ':')
            {
                return $"unexpected '{after}' after the IPv6 address";
            }

            portText = after.Length > 0 ? after[1..] : null;
            if (ParsePort(portText, portRequired, out var v6Port) is { } v6Error)
            {
                return v6Error;
            }

            host = literal;
            address = new IPEndPoint(ipv6, v6Port);
            return null;
        }

        var colon = hostPort.IndexOf(':', StringComparison.Ordinal);
        if (colon >= 0 && hostPort.IndexOf(':', colon + 1) >= 0)
        {
            return $"'{hostPort}' has more than one ':'; write IPv6 addresses in brackets, e.g. [::1]:{DefaultPort}";
        }

        var name = colon >= 0 ? hostPort[..colon] : hostPort;
        portText = colon >= 0 ? hostPort[(colon + 1)..] : null;
        if (name.Length == 0)
        {
            return "the host is empty";
        }

        if (ParsePort(portText, portRequired, out var port) is { } portError)
        {
            return portError;
        }

        if (name.All(c => char.IsAsciiDigit(c) || c == '.'))
        {
            // Only the dotted-quad form: IPAddress.Parse would also take "10.1" or "167772161".
            var parts = name.Split('.');
            if (parts.Length != 4 || parts.Any(p => p.Length is 0 or > 3 || int.Parse(p, CultureInfo.InvariantCulture) > 255))
            {
                return $"'{name}' is not a valid IPv4 address";
            }

            host = name;
            address = new IPEndPoint(IPAddress.Parse(name), port);
            return null;
        }

        if (Uri.CheckHostName(name) != UriHostNameType.Dns)
        {
            return $"'{name}' is not a valid host name";
        }

        host = name;
        address = new DnsEndPoint(name, port);
        return null;
    }

    private static string? ParsePort(string? text, bool required, out int port)
    {
        port = DefaultPort;
        if (string.IsNullOrEmpty(text))
        {
            // RFC 3986 allows "host:" with an empty port, meaning the default.
            return required ? "a port is required in the nbd:HOST:PORT form" : null;
        }

        if (!text.All(char.IsAsciiDigit) || text.Length > 5 || !int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out port) || port is < 1 or > 65535)
        {
            port = 0;
            return $"invalid port '{text}' (expected a number from 1 to 65535)";
        }

        return null;
    }

    private static string? CreateUnixEndPoint(string socket, out UnixDomainSocketEndPoint? endPoint)
    {
        endPoint = null;
        if (socket.Length == 0)
        {
            return "the socket path is empty";
        }

        // A leading NUL (%00) selects the Linux abstract namespace; anywhere else it is a mistake.
        if (socket.IndexOf('\0', 1) >= 0)
        {
            return "the socket path contains a NUL byte";
        }

        try
        {
            endPoint = new UnixDomainSocketEndPoint(socket);
            return null;
        }
        catch (ArgumentOutOfRangeException)
        {
            return $"the socket path is too long ({Encoding.UTF8.GetByteCount(socket)} bytes; unix sockets allow 107)";
        }
    }

    private static string? DecodeExportName(string encoded, out string export)
    {
        export = "";
        if (PercentDecode(encoded, out var decoded) is { } error)
        {
            return error;
        }

        export = decoded!;
        return ValidateExportName(export);
    }

    private static string? ValidateExportName(string export)
    {
        if (export.Contains('\0', StringComparison.Ordinal))
        {
            return "the export name contains a NUL byte";
        }

        var bytes = Encoding.UTF8.GetByteCount(export);
        return bytes > MaxExportNameBytes ? $"the export name is {bytes} bytes; NBD allows at most {MaxExportNameBytes}" : null;
    }

    private static string? PercentDecode(string text, out string? decoded)
    {
        decoded = null;
        if (!text.Contains('%', StringComparison.Ordinal))
        {
            decoded = text;
            return null;
        }

        var bytes = new List<byte>(text.Length);
        Span<byte> utf8 = stackalloc byte[4];
        for (var i = 0; i < text.Length; i++)
        {
            if (text[i] == '%')
            {
                if (i + 2 >= text.Length || !char.IsAsciiHexDigit(text[i + 1]) || !char.IsAsciiHexDigit(text[i + 2]))
                {
                    return $"bad percent-encoding at '{text[i..Math.Min(text.Length, i + 3)]}' (expected %XX)";
                }

                bytes.Add(byte.Parse(text.AsSpan(i + 1, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                i += 2;
            }
            else if (char.IsSurrogate(text[i]))
            {
                var length = Encoding.UTF8.GetBytes(text.AsSpan(i, Math.Min(2, text.Length - i)), utf8);
                bytes.AddRange(utf8[..length]);
                i += Math.Min(2, text.Length - i) - 1;
            }
            else
            {
                var length = Encoding.UTF8.GetBytes(text.AsSpan(i, 1), utf8);
                bytes.AddRange(utf8[..length]);
            }
        }

        try
        {
            decoded = StrictUtf8.GetString(bytes.ToArray());
            return null;
        }
        catch (DecoderFallbackException)
        {
            return $"'{text}' is not valid UTF-8 once percent-decoded";
        }
    }

    /// <summary>Percent-encodes all but unreserved characters, '/', ':' and '@' (legal as they are in both
    /// the path and a query value); '?', '#', '&amp;', '=', '+', '%' and the rest are encoded.</summary>
    private static string Escape(string value)
    {
        var builder = new StringBuilder(value.Length);
        foreach (var b in Encoding.UTF8.GetBytes(value))
        {
            var c = (char)b;
            if (char.IsAsciiLetterOrDigit(c) || c is '-' or '.' or '_' or '~' or '/' or ':' or '@')
            {
                builder.Append(c);
            }
            else
            {
                builder.Append('%').Append(b.ToString("X2", CultureInfo.InvariantCulture));
            }
        }

        return builder.ToString();
    }

    /// <summary>The exact sun_path of a unix endpoint (its ToString() shows an abstract name as "@name",
    /// which cannot be told apart from a relative path starting with '@').</summary>
    private static string UnixSocketPath(UnixDomainSocketEndPoint endPoint)
    {
        var address = endPoint.Serialize();
        var bytes = new byte[address.Size - 2];
        for (var i = 0; i < bytes.Length; i++)
        {
            bytes[i] = address[i + 2];
        }

        var length = bytes.Length;
        if (length > 0 && bytes[0] != 0)
        {
            length = Array.IndexOf(bytes, (byte)0) is var nul and >= 0 ? nul : length;
        }

        return Encoding.UTF8.GetString(bytes, 0, length);
    }

    /// <summary>The input for an error message: shortened, and without the user name of a TLS URI.</summary>
    private static string Display(string? uri)
    {
        if (uri is null)
        {
            return "";
        }

        var start = uri.IndexOf("://", StringComparison.Ordinal);
        if (start >= 0)
        {
            var authorityEnd = uri.IndexOfAny(['/', '?', '#'], start + 3);
            var at = uri.IndexOf('@', start + 3);
            if (at >= 0 && (authorityEnd < 0 || at < authorityEnd))
            {
                uri = uri[..(start + 3)] + uri[(at + 1)..];
            }
        }

        return uri.Length <= 200 ? uri : uri[..200] + "...";
    }
}
