using System.Globalization;
using System.Text;
using System.Text.Json;

namespace ImageioProxy.Client;

/// <summary>How progress is shown.</summary>
public enum ProgressOutput
{
    /// <summary>A live bar on a terminal; only the phases and the final summary when not on a terminal.</summary>
    Text,

    /// <summary>One JSON object per line (imageio's <c>--output json</c> fields: transferred, elapsed,
    /// description, size), at every phase change, every second, and at the end.</summary>
    Json,

    /// <summary>Nothing.</summary>
    None,
}

/// <summary>Samples a <see cref="TransferProgress"/> on a timer and draws it. The only writer of the
/// output while a transfer runs, so parallel workers never interleave text.</summary>
public sealed class ProgressDisplay : IAsyncDisposable
{
    private static readonly TimeSpan RateWindow = TimeSpan.FromSeconds(3);

    private readonly TransferProgress _progress;
    private readonly ProgressOutput _output;
    private readonly TextWriter _writer;
    private readonly bool _isTerminal;
    private readonly Lock _lock = new();
    private readonly Queue<(TimeSpan At, long Transferred)> _samples = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;
    private int _lastLineLength;
    private bool _completed;

    private ProgressDisplay(TransferProgress progress, ProgressOutput output, TextWriter writer, bool isTerminal, TimeSpan interval)
    {
        _progress = progress;
        _output = output;
        _writer = writer;
        _isTerminal = isTerminal;
        progress.PhaseChanged += OnPhaseChanged;
        _loop = output == ProgressOutput.None || (output == ProgressOutput.Text && !isTerminal)
            ? Task.CompletedTask
            : RunAsync(interval, _stop.Token);
    }

    /// <summary>Starts drawing. <paramref name="isTerminal"/>: the writer is a terminal (the bar redraws in
    /// place with '\r'). <paramref name="interval"/>: redraw period (default 0.1 s for the bar, 1 s for JSON).</summary>
    public static ProgressDisplay Start(TransferProgress progress, ProgressOutput output, TextWriter writer, bool isTerminal, TimeSpan? interval = null)
    {
        ArgumentNullException.ThrowIfNull(progress);
        ArgumentNullException.ThrowIfNull(writer);
        return new ProgressDisplay(progress, output, writer, isTerminal,
            interval ?? (output == ProgressOutput.Json ? TimeSpan.FromSeconds(1) : TimeSpan.FromMilliseconds(100)));
    }

    /// <summary>Stops the timer and prints the final state: the summary line on success, or ends the bar's
    /// line so that an error message starts on a line of its own.</summary>
    public async Task CompleteAsync(bool succeeded)
    {
        if (_completed)
        {
            return;
        }
        _completed = true;
        await StopLoopAsync();
        lock (_lock)
        {
            switch (_output)
            {
                case ProgressOutput.Json:
                    WriteJson();
                    break;
                case ProgressOutput.Text when succeeded:
                    ClearBar();
                    _writer.WriteLine(Summary(_progress));
                    break;
                case ProgressOutput.Text when _isTerminal && _lastLineLength > 0:
                    _writer.WriteLine();
                    _lastLineLength = 0;
                    break;
            }
            _writer.Flush();
        }
    }

    public async ValueTask DisposeAsync()
    {
        _progress.PhaseChanged -= OnPhaseChanged;
        await StopLoopAsync();
        _stop.Dispose();
    }

    /// <summary>imageio's closing line: <c>[ 100% ] 2.00 GiB, 3.91 s, 523.80 MiB/s</c>.</summary>
    public static string Summary(TransferProgress progress)
    {
        ArgumentNullException.ThrowIfNull(progress);
        var seconds = Math.Max(progress.Elapsed.TotalSeconds, 1e-6);
        var percent = progress.Size > 0 ? 100.0 * progress.Transferred / progress.Size : 100.0;
        return string.Create(CultureInfo.InvariantCulture,
            $"[ {percent,3:0}% ] {FormatBytes(progress.Transferred)}, {seconds:0.00} s, {FormatBytes((long)(progress.Transferred / seconds))}/s");
    }

    /// <summary>The live bar: phase, bar, percent, bytes, recent rate, ETA.</summary>
    internal static string Bar(string phase, long transferred, long size, double bytesPerSecond)
    {
        const int Width = 24;
        var fraction = size > 0 ? Math.Clamp((double)transferred / size, 0, 1) : 0;
        var filled = (int)(fraction * Width);
        var eta = bytesPerSecond > 0 && size > transferred
            ? TimeSpan.FromSeconds(Math.Min((size - transferred) / bytesPerSecond, 359999))
            : (TimeSpan?)null;
        var builder = new StringBuilder();
        builder.Append(CultureInfo.InvariantCulture,
            $"{phase} [{new string('#', filled)}{new string('.', Width - filled)}] {fraction * 100,3:0}% {FormatBytes(transferred)} / {FormatBytes(size)}");
        builder.Append(CultureInfo.InvariantCulture, $", {FormatBytes((long)bytesPerSecond)}/s");
        builder.Append(eta is { } e ? string.Create(CultureInfo.InvariantCulture, $", ETA {(int)e.TotalHours:00}:{e.Minutes:00}:{e.Seconds:00}") : ", ETA --:--:--");
        return builder.ToString();
    }

    /// <summary>Binary units with two decimals, as imageio prints them.</summary>
    public static string FormatBytes(long bytes)
    {
        string[] units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
        double value = bytes;
        var unit = 0;
        while (value >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }
        return unit == 0
            ? string.Create(CultureInfo.InvariantCulture, $"{bytes} bytes")
            : string.Create(CultureInfo.InvariantCulture, $"{value:0.00} {units[unit]}");
    }

    /// <summary>One JSON progress line, imageio's fields.</summary>
    public static string JsonLine(TransferProgress progress)
    {
        ArgumentNullException.ThrowIfNull(progress);
        using var stream = new MemoryStream();
        using (var json = new Utf8JsonWriter(stream))
        {
            json.WriteStartObject();
            json.WriteNumber("transferred", progress.Transferred);
            json.WriteNumber("elapsed", Math.Round(progress.Elapsed.TotalSeconds, 3));
            json.WriteString("description", progress.Phase);
            json.WriteNumber("size", progress.Size);
            json.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray());
    }

    private async Task StopLoopAsync()
    {
        if (!_stop.IsCancellationRequested)
        {
            await _stop.CancelAsync();
        }
        try
        {
            await _loop;
        }
        catch (OperationCanceledException)
        {
        }
    }

    private async Task RunAsync(TimeSpan interval, CancellationToken cancellationToken)
    {
        using var timer = new PeriodicTimer(interval);
        while (await timer.WaitForNextTickAsync(cancellationToken))
        {
            lock (_lock)
            {
                if (_output == ProgressOutput.Json)
                {
                    WriteJson();
                }
                else
                {
                    DrawBar();
                }
                _writer.Flush();
            }
        }
    }

    private void OnPhaseChanged(TransferProgress progress)
    {
        if (_completed)
        {
            return;
        }
        lock (_lock)
        {
            switch (_output)
            {
                case ProgressOutput.Json:
                    WriteJson();
                    break;
                case ProgressOutput.Text when _isTerminal:
                    DrawBar();
                    break;
                case ProgressOutput.Text:
                    _writer.WriteLine(progress.Phase);
                    break;
            }
            _writer.Flush();
        }
    }

    private void WriteJson() => _writer.WriteLine(JsonLine(_progress));

    private void DrawBar()
    {
        var now = _progress.Elapsed;
        var transferred = _progress.Transferred;
        _samples.Enqueue((now, transferred));
        while (_samples.Count > 2 && now - _samples.Peek().At > RateWindow)
        {
            _samples.Dequeue();
        }
        var (oldestAt, oldestTransferred) = _samples.Peek();
        var span = (now - oldestAt).TotalSeconds;
        var rate = span > 0 ? (transferred - oldestTransferred) / span : 0;
        var line = Bar(_progress.Phase, transferred, _progress.Size, rate);
        // Pad over the previous line's tail; '\r' returns to the start of the line.
        _writer.Write('\r' + line.PadRight(_lastLineLength));
        _lastLineLength = line.Length;
    }

    private void ClearBar()
    {
        if (_isTerminal && _lastLineLength > 0)
        {
            _writer.Write('\r' + new string(' ', _lastLineLength) + '\r');
            _lastLineLength = 0;
        }
    }
}
