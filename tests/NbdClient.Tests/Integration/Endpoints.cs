using System.Net.Sockets;
using TestSupport;

namespace NbdClient.Tests.Integration;

internal static class Endpoints
{
    public static NbdEndpoint Of(NbdServer server, bool tls = false) =>
        new(new UnixDomainSocketEndPoint(server.SocketPath), server.ExportName, tls, tls ? "localhost" : null);

    /// <summary>Bounds every wait in a test: a hang is a failure, not a timeout of the whole run.</summary>
    public static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);

    public static byte[] RandomBytes(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }
}
