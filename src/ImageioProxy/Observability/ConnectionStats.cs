namespace ImageioProxy.Observability;

/// <summary>Per-connection operation counters, logged in one line when the connection closes, like
/// imageio's "CLOSE connection=… [write 2 ops, …, 256.00 MiB, 180.14 MiB/s] [flush …]"
/// (imageio-api.md §2).</summary>
public sealed class ConnectionStats
{
    private readonly Lock _lock = new();
    private readonly long[] _ops = new long[DataOperationNames.Count];
    private readonly long[] _bytes = new long[DataOperationNames.Count];
    private readonly TimeSpan[] _time = new TimeSpan[DataOperationNames.Count];
    private int _requests;
    private string? _client;

    /// <summary>HTTP requests served on the connection (every kind, errors included).</summary>
    public int Requests => Volatile.Read(ref _requests);

    /// <summary>The client as the last request saw it: the X-Forwarded-For address when a trusted proxy
    /// forwarded it, else null (the socket's peer is used).</summary>
    public string? ForwardedClient
    {
        get { lock (_lock) { return _client; } }
    }

    internal void BeginRequest(string? forwardedClient)
    {
        Interlocked.Increment(ref _requests);
        if (forwardedClient is not null)
        {
            lock (_lock)
            {
                _client = forwardedClient;
            }
        }
    }

    public void Record(DataOperationKind kind, long bytes, TimeSpan elapsed)
    {
        var i = (int)kind;
        lock (_lock)
        {
            _ops[i]++;
            _bytes[i] += bytes;
            _time[i] += elapsed;
        }
    }

    public long Ops(DataOperationKind kind)
    {
        lock (_lock) { return _ops[(int)kind]; }
    }

    public long Bytes(DataOperationKind kind)
    {
        lock (_lock) { return _bytes[(int)kind]; }
    }

    public TimeSpan Time(DataOperationKind kind)
    {
        lock (_lock) { return _time[(int)kind]; }
    }

    /// <summary>MiB/s of reads and writes over the time spent in them (0 when none).</summary>
    public double DataThroughputMiBps()
    {
        lock (_lock)
        {
            var bytes = _bytes[(int)DataOperationKind.Read] + _bytes[(int)DataOperationKind.Write];
            var seconds = (_time[(int)DataOperationKind.Read] + _time[(int)DataOperationKind.Write]).TotalSeconds;
            return seconds > 0 ? bytes / seconds / (1024 * 1024) : 0;
        }
    }
}
