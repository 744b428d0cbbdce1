using System.Diagnostics;

namespace ImageioProxy.Client;

/// <summary>The one progress counter of a transfer. Workers add to it concurrently (a lock-free add); the
/// display samples it on its own timer, so workers never wait for the terminal.</summary>
public sealed class TransferProgress
{
    private readonly Stopwatch _stopwatch = Stopwatch.StartNew();
    private long _transferred;
    private long _size;
    private volatile string _phase = "starting";

    /// <summary>Bytes done: copied, zeroed or skipped because they are zero (imageio counts those too).</summary>
    public long Transferred => Interlocked.Read(ref _transferred);

    /// <summary>Total bytes, 0 until known.</summary>
    public long Size => Interlocked.Read(ref _size);

    /// <summary>What is happening, in imageio's words ("uploading image", …).</summary>
    public string Phase => _phase;

    public TimeSpan Elapsed => _stopwatch.Elapsed;

    /// <summary>Raised on the caller's thread when the phase changes (the display prints a line for it).</summary>
    public event Action<TransferProgress>? PhaseChanged;

    public void Add(long bytes) => Interlocked.Add(ref _transferred, bytes);

    public void SetSize(long size) => Interlocked.Exchange(ref _size, size);

    public void SetPhase(string phase)
    {
        _phase = phase;
        PhaseChanged?.Invoke(this);
    }
}
