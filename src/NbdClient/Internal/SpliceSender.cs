using System.Net.Sockets;
using System.Runtime.InteropServices;
using static NbdClient.Internal.Libc;

namespace NbdClient.Internal;

/// <summary>Zero-copy sends of large WRITE payloads on Linux. vmsplice(2) puts references to the caller's
/// pages into a pipe and splice(2) moves them into the socket, so the payload is never copied into socket
/// buffers: the socket queues page references and the server reads straight from our memory. In a
/// socketpair test the sender's CPU per GiB fell from 0.27-0.43 s to 0.05-0.07 s (docs/benchmarks.md).
/// The price: the pages stay in use until the server has read them, which a client only learns from the
/// reply. <see cref="NbdRequest"/> therefore keeps the payload pinned and the caller waiting until then.
/// A dedicated thread does the work because the socket is non-blocking (the runtime owns it) and waiting
/// for room in it means a blocking poll(2), which must not happen on a thread-pool or I/O thread.</summary>
internal sealed unsafe class SpliceSender : IDisposable
{
    /// <summary>Payloads from this size go through the pipe; smaller ones are cheaper to copy.</summary>
    public const int MinimumPayload = 64 * 1024;

    /// <summary>Pipe capacity asked for: one default chunk per vmsplice. Unprivileged processes get at
    /// most /proc/sys/fs/pipe-max-size (1 MiB by default); a smaller pipe only means more calls.</summary>
    private const int PipeSize = 1024 * 1024;

    private const int PollMilliseconds = 250;

    private readonly SafeHandle _socket;
    private readonly SplicePipe _pipe; // empty between sends: every byte put in is moved out at once
    private readonly object _gate = new();
    private Thread? _thread; // started by the first send: a connection that only reads never needs it
    private Job? _job;
    private bool _disposed;
    private bool _exited;

    private SpliceSender(SafeHandle socket, SplicePipe pipe)
    {
        _socket = socket;
        _pipe = pipe;
    }

    /// <summary>The pipe's descriptors (tests check that they are closed).</summary>
    internal (int Read, int Write) Pipe => (_pipe.ReadDescriptor, _pipe.WriteDescriptor);

    /// <summary>A sender for <paramref name="socket"/>, or null where zero-copy is unavailable (not Linux on
    /// x64 or arm64, whose flag and ioctl values these are; or no pipe could be made): the caller then
    /// sends as usual.</summary>
    public static SpliceSender? TryCreate(Socket socket)
    {
        if (!IsSupported)
            return null;
        SplicePipe? pipe;
        try
        {
            // Best effort on the size: the default 64 KiB pipe works too, with more calls.
            pipe = SplicePipe.TryCreate(PipeSize);
        }
        catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException)
        {
            return null; // a libc without these calls: send as usual
        }
        if (pipe is null)
            return null;
        if (!Probe(socket, pipe.ReadDescriptor, pipe.WriteDescriptor))
        {
            pipe.Dispose();
            return null;
        }
        return new SpliceSender(socket.SafeHandle, pipe);
    }

    /// <summary>Whether vmsplice and splice may be called here at all: a container's seccomp profile can
    /// forbid them (EPERM), and a send that fails that way would fail the connection. One byte goes into
    /// the pipe and is read back; a splice of 0 bytes into the socket moves nothing.</summary>
    private static bool Probe(Socket socket, int pipeRead, int pipeWrite)
    {
        byte probe = 0;
        var span = new IoVec { Base = &probe, Length = 1 };
        if (vmsplice(pipeWrite, &span, 1, SPLICE_F_NONBLOCK) != 1 || read(pipeRead, &probe, 1) != 1)
            return false;
        var added = false;
        try
        {
            socket.SafeHandle.DangerousAddRef(ref added);
            return splice(pipeRead, null, (int)socket.SafeHandle.DangerousGetHandle(), null, 0, SPLICE_F_NONBLOCK) == 0;
        }
        finally
        {
            if (added)
                socket.SafeHandle.DangerousRelease();
        }
    }

    /// <summary>Sends <paramref name="length"/> bytes at <paramref name="data"/>, which must stay pinned and
    /// unchanged until the server replied to the request they belong to. The task completes on this
    /// sender's thread, which then runs the caller's continuation (the connection's writer loop) itself:
    /// its next payload is sent right there, without a hand-off between threads.</summary>
    public Task SendAsync(byte* data, int length) => Start(new Job(data, null, length));

    /// <summary>Sends the first <paramref name="length"/> bytes held by <paramref name="source"/>: splice(2)
    /// moves its page references into the socket, so the payload is not copied here at all. Unlike
    /// <see cref="SendAsync"/> nothing stays pinned: the pages belong to the kernel.</summary>
    public Task SendFromPipeAsync(SplicePipe source, int length)
    {
        // First on the calling thread, without waiting: usually the socket has room, and then the send
        // costs no wake-up of the sender thread. Only what does not fit goes to the thread.
        int left;
        try
        {
            left = TrySendFromPipe(source, length);
        }
        catch (Exception ex)
        {
            return Task.FromException(ex);
        }
        return left == 0 ? Task.CompletedTask : Start(new Job(null, source, left));
    }

    /// <summary>Splices from the pipe until the socket is full; returns the bytes not sent.</summary>
    private int TrySendFromPipe(SplicePipe source, int length)
    {
        if (source.Length < length)
            throw new InvalidOperationException($"the pipe holds {source.Length} bytes, not the request's {length}");
        var added = false;
        _socket.DangerousAddRef(ref added);
        try
        {
            var fd = (int)_socket.DangerousGetHandle();
            var left = length;
            while (left > 0)
            {
                var moved = splice(source.ReadDescriptor, null, fd, null, (nuint)left, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                if (moved > 0)
                {
                    left -= (int)moved;
                    source.Taken((int)moved);
                    continue;
                }
                if (moved == 0)
                    throw new IOException("the socket took no data (closed)");
                var errno = Marshal.GetLastPInvokeError();
                if (errno == EAGAIN)
                    return left;
                if (errno != EINTR)
                    throw Error("splice");
            }
            return 0;
        }
        finally
        {
            if (added)
                _socket.DangerousRelease();
        }
    }

    private Task Start(Job job)
    {
        if (_thread is not null && Thread.CurrentThread == _thread)
        {
            try
            {
                Send(job);
                return Task.CompletedTask;
            }
            catch (Exception ex)
            {
                return Task.FromException(ex);
            }
        }
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed || _exited, this);
            // The writer loop awaits each send before the next, so one slot is enough.
            if (_job is not null)
                throw new InvalidOperationException("a splice send is already running");
            _job = job;
            if (_thread is null)
            {
                // Small stack: the thread only loops over a few system calls.
                _thread = new Thread(Run, 256 * 1024) { IsBackground = true, Name = "NBD splice" };
                _thread.Start();
            }
            Monitor.Pulse(_gate);
        }
        return job.Done.Task;
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed)
                return;
            _disposed = true;
            if (_thread is not null)
            {
                Monitor.Pulse(_gate); // the thread closes the pipe once it is out of any call that uses it
                return;
            }
        }
        ClosePipe();
    }

    private void ClosePipe() => _pipe.Dispose();

    private void Run()
    {
        try
        {
            while (true)
            {
                Job job;
                lock (_gate)
                {
                    // A plain wait: the sender is idle between payloads, and spinning here cost CPU.
                    while (_job is null && !_disposed)
                        Monitor.Wait(_gate);
                    if (_job is null)
                        break;
                    job = _job;
                    _job = null;
                }
                try
                {
                    Send(job);
                    job.Done.TrySetResult();
                }
                catch (Exception ex)
                {
                    job.Done.TrySetException(ex);
                }
            }
        }
        finally
        {
            lock (_gate)
            {
                _exited = true;
                _job?.Done.TrySetException(new ObjectDisposedException(nameof(SpliceSender)));
                _job = null;
            }
            ClosePipe();
        }
    }

    private void Send(Job job)
    {
        if (job.Source is { } source)
            SendFromPipe(source, job.Length);
        else
            Send(job.Data, job.Length);
    }

    private void SendFromPipe(SplicePipe source, int length)
    {
        var added = false;
        _socket.DangerousAddRef(ref added); // the fd number cannot be closed and reused while we poll it
        try
        {
            var left = TrySendFromPipe(source, length);
            while (left > 0)
            {
                // The pipe holds at least `left` bytes, so stopping early means that the socket is full.
                WaitWritable((int)_socket.DangerousGetHandle());
                left = TrySendFromPipe(source, left);
            }
        }
        finally
        {
            if (added)
                _socket.DangerousRelease();
        }
    }

    private void Send(byte* data, int length)
    {
        var added = false;
        _socket.DangerousAddRef(ref added); // the fd number cannot be closed and reused under us
        try
        {
            var fd = (int)_socket.DangerousGetHandle();
            var done = 0;
            while (done < length)
            {
                // The pipe is empty here (every byte put in is moved out below), so this cannot block.
                var span = new IoVec { Base = data + done, Length = (nuint)(length - done) };
                var mapped = vmsplice(_pipe.WriteDescriptor, &span, 1, SPLICE_F_NONBLOCK);
                if (mapped < 0)
                {
                    if (Marshal.GetLastPInvokeError() == EINTR)
                        continue;
                    throw Error("vmsplice");
                }
                if (mapped == 0)
                    throw new IOException("vmsplice mapped nothing into an empty pipe");
                var left = mapped;
                while (left > 0)
                {
                    var moved = splice(_pipe.ReadDescriptor, null, fd, null, (nuint)left, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                    if (moved > 0)
                    {
                        left -= moved;
                        continue;
                    }
                    if (moved == 0)
                        throw new IOException("the socket took no data (closed)");
                    var errno = Marshal.GetLastPInvokeError();
                    if (errno == EAGAIN)
                        WaitWritable(fd);
                    else if (errno != EINTR)
                        throw Error("splice");
                }
                done += (int)mapped;
            }
        }
        finally
        {
            if (added)
                _socket.DangerousRelease();
        }
    }

    private void WaitWritable(int fd)
    {
        var poll = new PollFd { Fd = fd, Events = POLLOUT };
        while (true)
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed), this);
            var ready = Poll(&poll, 1, PollMilliseconds);
            if (ready > 0)
                return; // writable, or an error that the next splice reports
            if (ready < 0 && Marshal.GetLastPInvokeError() != EINTR)
                throw Error("poll");
        }
    }

    /// <summary>A second descriptor for <paramref name="socket"/>, which keeps the socket open after the
    /// runtime closes its own; -1 if none could be made. Close-on-exec, like the runtime's own: a child
    /// process (serve-image's qemu-nbd) must not inherit it and keep the socket open.</summary>
    public static int Duplicate(Socket socket)
    {
        var added = false;
        try
        {
            socket.SafeHandle.DangerousAddRef(ref added);
            return fcntl((int)socket.SafeHandle.DangerousGetHandle(), F_DUPFD_CLOEXEC, 0);
        }
        catch (ObjectDisposedException)
        {
            return -1;
        }
        finally
        {
            if (added)
                socket.SafeHandle.DangerousRelease();
        }
    }

    public static void CloseDescriptor(int fd) => _ = close(fd);

    /// <summary>Whether the socket behind <paramref name="fd"/> still holds bytes we sent (SIOCOUTQ: the
    /// peer has not read them, and has not closed, which frees its queue). First reads and drops what the
    /// peer sent, so that its replies cannot fill our receive buffer and stall it.</summary>
    public static bool HoldsSentBytes(int fd, byte[] scratch)
    {
        fixed (byte* buffer = scratch)
        {
            while (recv(fd, buffer, (nuint)scratch.Length, MSG_DONTWAIT) > 0)
            {
            }
        }
        int queued;
        return ioctl(fd, SIOCOUTQ, &queued) == 0 && queued > 0;
    }

    /// <summary>A payload in our memory (<paramref name="data"/>) or in a pipe (<paramref name="source"/>).</summary>
    private sealed class Job(byte* data, SplicePipe? source, int length)
    {
        public byte* Data { get; } = data;
        public SplicePipe? Source { get; } = source;
        public int Length { get; } = length;
        // Synchronous continuations on purpose (see SendAsync).
        public TaskCompletionSource Done { get; } = new();
    }

}
