using NbdClient.Protocol;
using NbdClient.Tests.Fakes;
using Xunit.Sdk;

namespace NbdClient.Tests;

/// <summary>Base for tests against <see cref="FakeNbdServer"/>: one server per test, connections
/// disposed (bounded) before the server, and helpers that turn a hang into a test failure.</summary>
public abstract class FakeServerTestBase : IAsyncLifetime
{
    private readonly List<NbdConnection> _connections = new();

    protected FakeNbdServer Server { get; } = new();

    /// <summary>Timeouts far above <see cref="TestBounds.Hang"/>, so a client that waits instead of
    /// failing is reported as a hang rather than hidden behind its own timeout.</summary>
    protected static NbdClientOptions Patient { get; } = new()
    {
        HandshakeTimeout = TimeSpan.FromSeconds(60),
        RequestTimeout = TimeSpan.FromSeconds(60),
        ConnectTimeout = TimeSpan.FromSeconds(60),
    };

    protected async Task<NbdConnection> ConnectAsync(NbdClientOptions? options = null, NbdEndpoint? endpoint = null)
    {
        var task = NbdConnection.ConnectAsync(endpoint ?? Server.Endpoint, options ?? Patient);
        var connection = await Bounded(task, "ConnectAsync");
        lock (_connections)
            _connections.Add(connection);
        return connection;
    }

    /// <summary>Connect and expect it to fail.</summary>
    protected async Task<NbdConnectionException> ConnectShouldFailAsync(NbdClientOptions? options = null, NbdEndpoint? endpoint = null)
    {
        var ex = await OutcomeAsync(NbdConnection.ConnectAsync(endpoint ?? Server.Endpoint, options ?? Patient), "ConnectAsync");
        ex.Should().NotBeNull("the handshake must fail");
        ex.Should().BeOfType<NbdConnectionException>("handshake failures are typed; got {0}", ex);
        var c = (NbdConnectionException)ex!;
        c.Phase.Should().Be(NbdPhase.Handshake, c.Message);
        return c;
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        NbdConnection[] connections;
        lock (_connections)
            connections = _connections.ToArray();
        foreach (var c in connections)
            await Bounded(c.DisposeAsync().AsTask(), "NbdConnection.DisposeAsync");
        await Server.DisposeAsync();
    }

    protected static async Task<T> Bounded<T>(Task<T> task, string what)
    {
        try
        {
            return await task.WaitAsync(TestBounds.Hang);
        }
        catch (TimeoutException) when (!task.IsCompleted)
        {
            throw new XunitException($"{what} did not complete within {TestBounds.Hang.TotalSeconds} s (hang)");
        }
    }

    protected static async Task Bounded(Task task, string what)
    {
        try
        {
            await task.WaitAsync(TestBounds.Hang);
        }
        catch (TimeoutException) when (!task.IsCompleted)
        {
            throw new XunitException($"{what} did not complete within {TestBounds.Hang.TotalSeconds} s (hang)");
        }
    }

    /// <summary>The exception a task ended with (null on success); a hang fails the test.</summary>
    protected static async Task<Exception?> OutcomeAsync(Task task, string what)
    {
        try
        {
            await task.WaitAsync(TestBounds.Hang);
            return null;
        }
        catch (TimeoutException) when (!task.IsCompleted)
        {
            throw new XunitException($"{what} did not complete within {TestBounds.Hang.TotalSeconds} s (hang)");
        }
        catch (Exception ex)
        {
            return ex;
        }
    }

    protected static async Task<NbdConnectionException> ShouldFailConnectionAsync(Task task, string what, params NbdConnectionFailure[] reasons)
    {
        var ex = await OutcomeAsync(task, what);
        ex.Should().NotBeNull($"{what} must fail");
        ex.Should().BeOfType<NbdConnectionException>($"{what} must fail with NbdConnectionException; got {ex}");
        var c = (NbdConnectionException)ex!;
        if (reasons.Length > 0)
            c.Reason.Should().BeOneOf(reasons, $"{what}: {c.Message}");
        return c;
    }

    /// <summary>A write-like request that was sent when the connection died.</summary>
    protected static async Task<NbdOutcomeUnknownException> ShouldBeOutcomeUnknownAsync(Task task, string what, params NbdConnectionFailure[] reasons)
    {
        var ex = await OutcomeAsync(task, what);
        ex.Should().NotBeNull($"{what} must fail");
        ex.Should().BeOfType<NbdOutcomeUnknownException>($"{what} was sent before the connection died; got {ex}");
        var u = (NbdOutcomeUnknownException)ex!;
        if (reasons.Length > 0)
        {
            u.InnerException.Should().BeOfType<NbdConnectionException>();
            ((NbdConnectionException)u.InnerException!).Reason.Should().BeOneOf(reasons, u.Message);
        }
        return u;
    }

    protected static async Task<NbdCommandException> ShouldFailCommandAsync(Task task, string what, NbdErrorCode? error = null)
    {
        var ex = await OutcomeAsync(task, what);
        ex.Should().NotBeNull($"{what} must fail");
        ex.Should().BeOfType<NbdCommandException>($"{what} must fail with NbdCommandException; got {ex}");
        var c = (NbdCommandException)ex!;
        if (error is { } e)
            c.Error.Should().Be(e, c.Message);
        return c;
    }

    protected static async Task ShouldSucceedAsync(Task task, string what)
    {
        var ex = await OutcomeAsync(task, what);
        ex.Should().BeNull($"{what} must succeed; got {ex}");
    }

    /// <summary>Runs a client call as a task; local refusals may be thrown synchronously by the call itself.</summary>
    protected static Task Call(Func<ValueTask> call)
    {
        try
        {
            return call().AsTask();
        }
        catch (Exception ex)
        {
            return Task.FromException(ex);
        }
    }

    protected static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }
}
