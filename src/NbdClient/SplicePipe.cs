using System.Net.Sockets;
using System.Runtime.InteropServices;
using NbdClient.Internal;
using static NbdClient.Internal.Libc;

namespace NbdClient;

/// <summary>A Linux pipe used as a buffer that user space never reads: splice(2) moves page references
/// from a socket into it (<see cref="SpliceFrom"/>), between pipes (<see cref="MoveTo"/>), and out to an NBD
/// server (<see cref="NbdPool.WriteAsync(long, SplicePipe, NbdCommandFlags, CancellationToken)"/>). A
/// payload that goes from a client's socket to the server this way is never copied by this process.
/// Not thread-safe: one owner at a time; while a write from it is in flight the connection owns it.</summary>
public sealed unsafe class SplicePipe : IDisposable
{
    /// <summary>Returned by <see cref="SpliceFrom"/> when the source has no data now, or this pipe is full.</summary>
    public const int WouldBlock = -1;

    private readonly int _read;
    private readonly int _write;
    private int _length;
    private bool _disposed;

    private SplicePipe(int read, int write, int capacity)
    {
        _read = read;
        _write = write;
        Capacity = capacity;
    }

    /// <summary>Whether pipes can be made here: Linux on x64 or arm64.</summary>
    public static bool IsSupported => Libc.IsSupported;

    /// <summary>The pipe's size in bytes as the kernel granted it. It has Capacity / 4096 slots, and a
    /// slot holds one piece of a socket buffer, so a pipe can be full with fewer bytes than this.</summary>
    public int Capacity { get; }

    /// <summary>Bytes in the pipe.</summary>
    public int Length => Volatile.Read(ref _length);

    internal int ReadDescriptor => _read;

    internal int WriteDescriptor => _write;

    /// <summary>A non-blocking, close-on-exec pipe (a child process must not inherit it) of <paramref name="capacity"/> bytes, or null where pipes
    /// are unsupported or none could be made (out of descriptors). Unprivileged processes get at most
    /// /proc/sys/fs/pipe-max-size (1 MiB by default), and less once the user's pipes pass
    /// /proc/sys/fs/pipe-user-pages-soft: <see cref="Capacity"/> says what was granted.</summary>
    public static SplicePipe? TryCreate(int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        if (!Libc.IsSupported)
            return null;
        int* fds = stackalloc int[2];
        if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0)
            return null;
        _ = fcntl(fds[1], F_SETPIPE_SZ, capacity); // best effort: a smaller pipe only means smaller pieces
        var granted = fcntl(fds[1], F_GETPIPE_SZ, 0);
        if (granted <= 0)
        {
            _ = close(fds[0]);
            _ = close(fds[1]);
            return null;
        }
        return new SplicePipe(fds[0], fds[1], granted);
    }

    /// <summary>Moves up to <paramref name="max"/> bytes from <paramref name="socket"/> into the pipe. Returns
    /// the bytes moved, 0 at the end of the stream, or <see cref="WouldBlock"/> when the socket has nothing
    /// now or the pipe is full; tell the two apart with <see cref="Socket.Available"/>. The socket is put in
    /// non-blocking mode first (a blocking TCP socket makes splice wait for all <paramref name="max"/>
    /// bytes); its asynchronous methods work as before, its synchronous ones then fail instead of waiting.</summary>
    public int SpliceFrom(Socket socket, int max)
    {
        ArgumentNullException.ThrowIfNull(socket);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(max);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (socket.Blocking)
            socket.Blocking = false;
        var added = false;
        socket.SafeHandle.DangerousAddRef(ref added);
        try
        {
            var fd = (int)socket.SafeHandle.DangerousGetHandle();
            while (true)
            {
                var moved = splice(fd, null, _write, null, (nuint)max, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                if (moved >= 0)
                {
                    _length += (int)moved;
                    return (int)moved;
                }
                var errno = Marshal.GetLastPInvokeError();
                if (errno == EAGAIN)
                    return WouldBlock;
                if (errno != EINTR)
                    throw new SocketException(errno);
            }
        }
        finally
        {
            if (added)
                socket.SafeHandle.DangerousRelease();
        }
    }

    /// <summary>Copies <paramref name="data"/> into the pipe (small pieces only: the rest of a body that
    /// user space already holds). Throws if the pipe has no room for all of it.</summary>
    public void Write(ReadOnlySpan<byte> data)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        fixed (byte* start = data)
        {
            var done = 0;
            while (done < data.Length)
            {
                var written = write(_write, start + done, (nuint)(data.Length - done));
                if (written > 0)
                {
                    done += (int)written;
                    _length += (int)written;
                    continue;
                }
                if (written < 0 && Marshal.GetLastPInvokeError() == EINTR)
                    continue;
                throw written < 0 ? Error("write") : new IOException("the pipe took no data");
            }
        }
    }

    /// <summary>Moves the first <paramref name="length"/> bytes of this pipe to the end of
    /// <paramref name="target"/> (page references, no copy). Throws if the target has no room for them.</summary>
    public void MoveTo(SplicePipe target, int length)
    {
        ArgumentNullException.ThrowIfNull(target);
        ObjectDisposedException.ThrowIf(_disposed, this);
        ObjectDisposedException.ThrowIf(target._disposed, target);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, _length);
        var left = length;
        while (left > 0)
        {
            var moved = splice(_read, null, target._write, null, (nuint)left, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (moved > 0)
            {
                left -= (int)moved;
                _length -= (int)moved;
                target._length += (int)moved;
                continue;
            }
            if (moved < 0 && Marshal.GetLastPInvokeError() == EINTR)
                continue;
            throw moved < 0 ? Error("splice") : new IOException("the pipe held fewer bytes than counted");
        }
    }

    /// <summary>Copies up to buffer.Length bytes out of the pipe (for connections that cannot splice:
    /// TLS, or a platform without it).</summary>
    public int Read(Span<byte> buffer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        fixed (byte* start = buffer)
        {
            while (true)
            {
                var got = read(_read, start, (nuint)buffer.Length);
                if (got >= 0)
                {
                    _length -= (int)got;
                    return (int)got;
                }
                var errno = Marshal.GetLastPInvokeError();
                if (errno == EAGAIN)
                    return 0;
                if (errno != EINTR)
                    throw Error("read");
            }
        }
    }

    /// <summary>The connection's sender moved <paramref name="count"/> bytes out.</summary>
    internal void Taken(int count) => Interlocked.Add(ref _length, -count);

    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        _ = close(_read);
        _ = close(_write);
    }
}
