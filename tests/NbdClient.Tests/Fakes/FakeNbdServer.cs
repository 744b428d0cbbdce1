using System.Net.Sockets;

namespace NbdClient.Tests.Fakes;

/// <summary>An in-process NBD server on a unix socket for what real servers won't do (in the spirit of
/// MySqlConnector's FakeMySqlServer). By default it is a well-behaved fixed-newstyle server: NO_ZEROES,
/// STRUCTURED_REPLY, SET_META_CONTEXT base:allocation, GO with INFO_BLOCK_SIZE + INFO_EXPORT, and a
/// sparse in-memory disk. Hooks let a test misbehave at chosen points:
/// <list type="bullet">
/// <item><see cref="OnAccept"/> replaces the whole session (raw bytes from the first byte on);</item>
/// <item><see cref="OnOption"/> sees every option before the default handling (return true = handled);</item>
/// <item><see cref="Transmission"/> replaces the transmission phase (default <see cref="FakeNbdSession.ServeAsync"/>);</item>
/// <item><see cref="OnRequest"/> sees every request in <see cref="FakeNbdSession.ServeAsync"/> (return true = handled).</item>
/// </list>
/// Every session records what the client sent (flags, options, requests, DISC) and the protocol rules
/// the client broke (<see cref="FakeNbdSession.Violations"/>). Exceptions thrown by a script other than
/// connection loss are collected and rethrown by <see cref="DisposeAsync"/>, so a broken script fails its test.</summary>
public sealed class FakeNbdServer : IAsyncDisposable
{
    private readonly Socket _listener;
    private readonly string _directory;
    private readonly List<FakeNbdSession> _sessions = new();
    private readonly List<Task> _sessionTasks = new();
    private readonly List<Exception> _faults = new();
    private readonly Task _acceptLoop;
    private readonly object _lock = new();
    private TaskCompletionSource _sessionAdded = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public FakeNbdServer()
    {
        // Short path: sun_path is limited to 108 bytes.
        _directory = Path.Combine(Path.GetTempPath(), "nbdf-" + Guid.NewGuid().ToString("N")[..10]);
        Directory.CreateDirectory(_directory);
        SocketPath = Path.Combine(_directory, "s");
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _listener.Bind(new UnixDomainSocketEndPoint(SocketPath));
        _listener.Listen(16);
        _acceptLoop = AcceptLoopAsync();
    }

    public string SocketPath { get; }

    public NbdEndpoint Endpoint => new(new UnixDomainSocketEndPoint(SocketPath), ExportName);

    // ---- configuration (read when a session reaches the point that uses it) ----

    public string ExportName { get; set; } = "";
    public ulong Size { get; set; } = 1024 * 1024;

    /// <summary>Default: nbdkit memory's 0x0d6d = HAS_FLAGS|FLUSH|FUA|TRIM|WRITE_ZEROES|MULTI_CONN|CACHE|FAST_ZERO.</summary>
    public ushort TransmissionFlags { get; set; } = 0x0d6d;
    public ushort HandshakeFlags { get; set; } = Wire.GFlagFixedNewstyle | Wire.GFlagNoZeroes;
    public bool StructuredReplies { get; set; } = true;

    /// <summary>Contexts the server knows, name → id (qemu-nbd uses id 0 for base:allocation).</summary>
    public Dictionary<string, uint> MetaContexts { get; } = new() { ["base:allocation"] = 0 };

    /// <summary>INFO_BLOCK_SIZE advertised in GO/INFO; null = none (like nbdkit without blocksize-policy).</summary>
    public (uint Minimum, uint Preferred, uint Maximum)? BlockSize { get; set; } = (1, 4096, 32 * 1024 * 1024);

    /// <summary>qemu-nbd 7.2 sends INFO_BLOCK_SIZE before INFO_EXPORT.</summary>
    public bool BlockSizeBeforeExport { get; set; } = true;

    public FakeDisk Disk { get; } = new();

    public Func<FakeNbdSession, Task>? OnAccept { get; set; }
    public Func<FakeNbdSession, FakeOption, Task<bool>>? OnOption { get; set; }
    public Func<FakeNbdSession, Task>? Transmission { get; set; }
    public Func<FakeNbdSession, FakeRequest, Task<bool>>? OnRequest { get; set; }

    // ---- observation ----

    public IReadOnlyList<FakeNbdSession> Sessions
    {
        get { lock (_lock) return _sessions.ToArray(); }
    }

    public IReadOnlyList<Exception> Faults
    {
        get { lock (_lock) return _faults.ToArray(); }
    }

    /// <summary>The index-th accepted session (0-based), waiting for it if needed.</summary>
    public async Task<FakeNbdSession> SessionAsync(int index = 0)
    {
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                if (_sessions.Count > index)
                    return _sessions[index];
                wait = _sessionAdded.Task;
            }
            await wait.WaitAsync(TestBounds.Hang);
        }
    }

    internal void AddFault(Exception ex)
    {
        lock (_lock)
            _faults.Add(ex);
    }

    private async Task AcceptLoopAsync()
    {
        while (true)
        {
            Socket socket;
            try
            {
                socket = await _listener.AcceptAsync().ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException or OperationCanceledException)
            {
                return;
            }
            FakeNbdSession session;
            TaskCompletionSource added;
            lock (_lock)
            {
                session = new FakeNbdSession(this, socket, _sessions.Count);
                _sessions.Add(session);
                _sessionTasks.Add(Task.Run(session.RunAsync));
                added = _sessionAdded;
                _sessionAdded = new(TaskCreationOptions.RunContinuationsAsynchronously);
            }
            added.TrySetResult();
        }
    }

    public async ValueTask DisposeAsync()
    {
        _listener.Dispose();
        await _acceptLoop.ConfigureAwait(false);
        Task[] tasks;
        lock (_lock)
        {
            foreach (var s in _sessions)
                s.Abort();
            tasks = _sessionTasks.ToArray();
        }
        try
        {
            await Task.WhenAll(tasks).WaitAsync(TestBounds.Hang).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            AddFault(new TimeoutException("a fake server session did not end after its socket was closed"));
        }
        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
        }
        var faults = Faults;
        if (faults.Count > 0)
            throw new AggregateException("fake NBD server script failed", faults);
    }
}

/// <summary>Time bounds for tests: a hang is a failure, never a timing assertion.</summary>
public static class TestBounds
{
    /// <summary>Anything that should complete promptly must complete within this, else the test reports a hang.</summary>
    public static readonly TimeSpan Hang = TimeSpan.FromSeconds(10);
}
