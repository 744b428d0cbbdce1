using System.Text;

namespace TestSupport;

/// <summary>Thread-safe text buffer that keeps the first <c>limit/4</c> and the last <c>3*limit/4</c>
/// characters of what was appended: the start of a server's output says how it was configured, the end
/// says why it died.</summary>
internal sealed class BoundedText
{
    private readonly object _lock = new();
    private readonly int _headLimit;
    private readonly int _tailLimit;
    private readonly StringBuilder _head = new();
    private readonly StringBuilder _tail = new();
    private long _dropped;

    public BoundedText(int limit)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(limit, 16);
        _headLimit = limit / 4;
        _tailLimit = limit - _headLimit;
    }

    public void AppendLine(string line)
    {
        lock (_lock)
        {
            var text = line + "\n";
            var intoHead = Math.Min(text.Length, _headLimit - _head.Length);
            if (intoHead > 0)
            {
                _head.Append(text, 0, intoHead);
                text = text[intoHead..];
            }

            _tail.Append(text);
            if (_tail.Length > _tailLimit)
            {
                var excess = _tail.Length - _tailLimit;
                _tail.Remove(0, excess);
                _dropped += excess;
            }
        }
    }

    public override string ToString()
    {
        lock (_lock)
        {
            return _dropped == 0
                ? _head.ToString() + _tail
                : $"{_head}[... {_dropped} characters dropped ...]\n{_tail}";
        }
    }
}
