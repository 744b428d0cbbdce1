namespace NbdClient.Internal;

/// <summary>A small receive buffer over a stream: headers are parsed from the buffer, large payloads
/// are read straight into the caller's memory. One reader at a time.</summary>
internal sealed class NbdReadBuffer
{
    private readonly Stream _stream;
    private readonly byte[] _buffer;
    private int _start;
    private int _end;

    public NbdReadBuffer(Stream stream, int size = 64 * 1024)
    {
        _stream = stream;
        _buffer = new byte[size];
    }

    public int Buffered => _end - _start;

    public ReadOnlySpan<byte> Span => _buffer.AsSpan(_start, _end - _start);

    public void Consume(int count)
    {
        _start += count;
        if (_start == _end)
            _start = _end = 0;
    }

    /// <summary>Ensures at least <paramref name="count"/> bytes are buffered. Returns false at end of stream.</summary>
    public ValueTask<bool> FillAsync(int count, CancellationToken cancellationToken)
    {
        if (_end - _start >= count)
            return new ValueTask<bool>(true);
        return FillSlowAsync(count, cancellationToken);
    }

    private async ValueTask<bool> FillSlowAsync(int count, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(count, _buffer.Length);
        if (_buffer.Length - _start < count)
        {
            Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
            _end -= _start;
            _start = 0;
        }
        while (_end - _start < count)
        {
            var read = await _stream.ReadAsync(_buffer.AsMemory(_end), cancellationToken).ConfigureAwait(false);
            if (read == 0)
                return false;
            _end += read;
        }
        return true;
    }

    /// <summary>Reads exactly destination.Length bytes. Returns false at end of stream.</summary>
    public async ValueTask<bool> ReadExactAsync(Memory<byte> destination, CancellationToken cancellationToken)
    {
        var fromBuffer = Math.Min(Buffered, destination.Length);
        _buffer.AsSpan(_start, fromBuffer).CopyTo(destination.Span);
        Consume(fromBuffer);
        destination = destination[fromBuffer..];
        while (destination.Length > 0)
        {
            if (destination.Length >= _buffer.Length / 2)
            {
                // Large payload: straight into the destination, no copy.
                var read = await _stream.ReadAsync(destination, cancellationToken).ConfigureAwait(false);
                if (read == 0)
                    return false;
                destination = destination[read..];
            }
            else
            {
                if (!await FillAsync(destination.Length, cancellationToken).ConfigureAwait(false))
                    return false;
                Span[..destination.Length].CopyTo(destination.Span);
                Consume(destination.Length);
                destination = default;
            }
        }
        return true;
    }

    /// <summary>Reads and discards <paramref name="count"/> bytes. Returns false at end of stream.</summary>
    public async ValueTask<bool> SkipAsync(long count, CancellationToken cancellationToken)
    {
        while (count > 0)
        {
            if (Buffered == 0 && !await FillAsync(1, cancellationToken).ConfigureAwait(false))
                return false;
            var n = (int)Math.Min(count, Buffered);
            Consume(n);
            count -= n;
        }
        return true;
    }
}
