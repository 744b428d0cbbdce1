using System.Net;

namespace NbdClient;

/// <summary>Where an export lives: a socket address, the export name and whether TLS is required.</summary>
/// <param name="Address">A <see cref="System.Net.Sockets.UnixDomainSocketEndPoint"/>, <see cref="DnsEndPoint"/> or <see cref="IPEndPoint"/>.</param>
/// <param name="ExportName">Export name ("" = default export).</param>
/// <param name="RequireTls">True for nbds:// and nbds+unix://: the connection fails if TLS cannot be negotiated.</param>
/// <param name="TlsHostname">Name to verify in the server certificate (URI host, or tls-hostname=).</param>
public sealed partial record NbdEndpoint(EndPoint Address, string ExportName, bool RequireTls = false, string? TlsHostname = null)
{
    // Parse, TryParse and ToString: NbdEndpoint.Parse.cs.
}
