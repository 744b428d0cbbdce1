using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using NbdClient;

namespace ImageioProxy.Tickets;

/// <summary>Parses the NBD URL forms imageio accepts in a ticket (imageio-api.md §5.1,
/// _internal/nbd.py _parse_url): nbd:unix:/path[:exportname=NAME], nbd:HOST:PORT[:exportname=NAME]
/// and nbd://HOST:PORT/NAME.</summary>
public static partial class NbdUrl
{
    public static bool TryParse(string url, out NbdEndpoint endpoint, out string error)
    {
        endpoint = null!;
        error = "";
        if (!url.StartsWith("nbd:", StringComparison.Ordinal))
        {
            var colon = url.IndexOf(':', StringComparison.Ordinal);
            error = $"Unsupported url scheme: {(colon < 0 ? "" : url[..colon])}";
            return false;
        }

        var rest = url["nbd:".Length..];
        if (rest.StartsWith("//", StringComparison.Ordinal))
        {
            // nbd://host:port/name: one leading "/" of the path is not part of the name.
            var authorityEnd = rest.IndexOf('/', 2);
            var authority = authorityEnd < 0 ? rest[2..] : rest[2..authorityEnd];
            var name = authorityEnd < 0 ? "" : rest[(authorityEnd + 1)..];
            var portColon = authority.LastIndexOf(':');
            if (portColon <= 0 || !TryPort(authority[(portColon + 1)..], out var port))
            {
                error = "Unsupported URL: a port is required";
                return false;
            }
            endpoint = new NbdEndpoint(HostEndPoint(authority[..portColon].Trim('[', ']'), port), Uri.UnescapeDataString(name));
            return true;
        }

        var unix = UnixForm().Match(rest);
        if (unix.Success)
        {
            endpoint = new NbdEndpoint(new UnixDomainSocketEndPoint(unix.Groups["path"].Value), unix.Groups["name"].Value);
            return true;
        }
        var tcp = TcpForm().Match(rest);
        if (tcp.Success && TryPort(tcp.Groups["port"].Value, out var tcpPort))
        {
            endpoint = new NbdEndpoint(HostEndPoint(tcp.Groups["host"].Value.Trim('[', ']'), tcpPort), tcp.Groups["name"].Value);
            return true;
        }
        error = "Unsupported URL";
        return false;
    }

    private static EndPoint HostEndPoint(string host, int port)
        => IPAddress.TryParse(host, out var address) ? new IPEndPoint(address, port) : new DnsEndPoint(host, port);

    private static bool TryPort(string text, out int port)
        => int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out port)
           && port is > 0 and <= 65535;

    [GeneratedRegex("^unix:(?<path>/[^:]*)(?::exportname=(?<name>.*))?$")]
    private static partial Regex UnixForm();

    [GeneratedRegex(@"^(?<host>\[[^\]]+\]|[^:/\[\]]+):(?<port>\d+)(?::exportname=(?<name>.*))?$")]
    private static partial Regex TcpForm();
}
