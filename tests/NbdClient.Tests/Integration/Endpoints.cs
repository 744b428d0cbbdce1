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

    /// <summary>Starts an operation against a paused nbdkit (pause filter), checks that it waits, cancels it and
    /// expects it to end cancelled; the server is resumed whatever happens.</summary>
    public static async Task CancelWhilePausedAsync(NbdkitServer server, Func<CancellationToken, Task> start)
    {
        using var cancel = new CancellationTokenSource();
        await server.PauseAsync();
        try
        {
            var operation = start(cancel.Token);
            await Task.Delay(200);
            operation.IsCompleted.Should().BeFalse("the server is paused");
            cancel.Cancel();
            await FluentActions.Awaiting(() => operation.WaitAsync(Bound)).Should().ThrowAsync<OperationCanceledException>();
        }
        finally
        {
            await server.ResumeAsync();
        }
    }
}
