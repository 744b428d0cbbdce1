using System.Text;

namespace NbdClient.Tests.Fakes;

/// <summary>One option the client sent during the handshake.</summary>
public sealed record FakeOption(uint Code, byte[] Data)
{
    /// <summary>GO / INFO payload: u32 name length, name, u16 n, n × u16 info type.</summary>
    public (string ExportName, ushort[] InfoRequests)? ParseGo()
    {
        var d = Data;
        if (d.Length < 6)
            return null;
        var nameLength = Wire.U32(d, 0);
        if (nameLength > d.Length - 6)
            return null;
        var name = Encoding.UTF8.GetString(d, 4, (int)nameLength);
        var at = 4 + (int)nameLength;
        var count = Wire.U16(d, at);
        at += 2;
        if (d.Length != at + count * 2)
            return null;
        var infos = new ushort[count];
        for (var i = 0; i < count; i++)
            infos[i] = Wire.U16(d, at + i * 2);
        return (name, infos);
    }

    /// <summary>LIST/SET_META_CONTEXT payload: u32 name length, name, u32 n, n × (u32 length, query).</summary>
    public (string ExportName, string[] Queries)? ParseMetaContext()
    {
        var d = Data;
        if (d.Length < 8)
            return null;
        var nameLength = Wire.U32(d, 0);
        if (nameLength > d.Length - 8)
            return null;
        var name = Encoding.UTF8.GetString(d, 4, (int)nameLength);
        var at = 4 + (int)nameLength;
        var count = Wire.U32(d, at);
        at += 4;
        var queries = new List<string>();
        for (var i = 0; i < count; i++)
        {
            if (at + 4 > d.Length)
                return null;
            var length = Wire.U32(d, at);
            at += 4;
            if (length > d.Length - at)
                return null;
            queries.Add(Encoding.UTF8.GetString(d, at, (int)length));
            at += (int)length;
        }
        return at == d.Length ? (name, queries.ToArray()) : null;
    }

    public override string ToString() => $"option {Code} ({Data.Length} bytes)";
}

/// <summary>One transmission-phase request as received.</summary>
public sealed record FakeRequest(uint Magic, ushort Flags, ushort Type, ulong Cookie, ulong Offset, uint Length, byte[]? Payload)
{
    public bool IsWriteLike => Type is Wire.CmdWrite or Wire.CmdWriteZeroes or Wire.CmdTrim;

    public override string ToString() => $"cmd {Type} flags 0x{Flags:x} cookie {Cookie} offset {Offset} length {Length}";
}

/// <summary>Sparse in-memory disk behind the default request handler (64 KiB pages, so big exports cost nothing).</summary>
public sealed class FakeDisk
{
    public const int PageSize = 64 * 1024;
    private readonly Dictionary<long, byte[]> _pages = new();
    private readonly object _lock = new();

    public byte[] Read(long offset, int length)
    {
        var result = new byte[length];
        lock (_lock)
        {
            var done = 0;
            while (done < length)
            {
                var at = offset + done;
                var page = at / PageSize;
                var inPage = (int)(at % PageSize);
                var n = Math.Min(length - done, PageSize - inPage);
                if (_pages.TryGetValue(page, out var bytes))
                    bytes.AsSpan(inPage, n).CopyTo(result.AsSpan(done));
                done += n;
            }
        }
        return result;
    }

    public void Write(long offset, ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            var done = 0;
            while (done < data.Length)
            {
                var at = offset + done;
                var page = at / PageSize;
                var inPage = (int)(at % PageSize);
                var n = Math.Min(data.Length - done, PageSize - inPage);
                if (!_pages.TryGetValue(page, out var bytes))
                    _pages[page] = bytes = new byte[PageSize];
                data.Slice(done, n).CopyTo(bytes.AsSpan(inPage));
                done += n;
            }
        }
    }

    /// <summary>Zero a range; whole pages become holes again.</summary>
    public void Zero(long offset, long length)
    {
        lock (_lock)
        {
            var done = 0L;
            while (done < length)
            {
                var at = offset + done;
                var page = at / PageSize;
                var inPage = (int)(at % PageSize);
                var n = (int)Math.Min(length - done, PageSize - inPage);
                if (_pages.TryGetValue(page, out var bytes))
                {
                    if (n == PageSize)
                        _pages.Remove(page);
                    else
                        bytes.AsSpan(inPage, n).Clear();
                }
                done += n;
            }
        }
    }

    /// <summary>base:allocation extents over [offset, offset+length): allocated pages 0, holes HOLE|ZERO (3).</summary>
    public List<(uint Length, uint Flags)> Extents(long offset, long length)
    {
        var result = new List<(uint Length, uint Flags)>();
        lock (_lock)
        {
            var done = 0L;
            while (done < length)
            {
                var at = offset + done;
                var page = at / PageSize;
                var n = (uint)Math.Min(length - done, PageSize - at % PageSize);
                var flags = _pages.ContainsKey(page) ? 0u : 3u;
                if (result.Count > 0 && result[^1].Flags == flags && result[^1].Length + (long)n <= uint.MaxValue)
                    result[^1] = (result[^1].Length + n, flags);
                else
                    result.Add((n, flags));
                done += n;
            }
        }
        return result;
    }
}
