using System.Runtime.InteropServices;

namespace NbdClient.Internal;

/// <summary>The Linux system calls behind zero-copy I/O (<see cref="SpliceSender"/>, <see cref="SplicePipe"/>).
/// The flag and ioctl values are those of x64 and arm64 Linux; callers check <see cref="IsSupported"/>.</summary>
internal static unsafe partial class Libc
{
    public const int O_NONBLOCK = 0x800;
    public const int O_CLOEXEC = 0x80000;
    public const int F_DUPFD_CLOEXEC = 1030;
    public const int F_SETPIPE_SZ = 1031;
    public const int F_GETPIPE_SZ = 1032;
    public const uint SPLICE_F_MOVE = 1;
    public const uint SPLICE_F_NONBLOCK = 2;
    public const short POLLIN = 1;
    public const short POLLOUT = 4;
    public const int EINTR = 4;
    public const int EAGAIN = 11;
    public const nuint SIOCOUTQ = 0x5411;
    public const nuint FIONREAD = 0x541B;
    public const int MSG_DONTWAIT = 0x40;

    /// <summary>Linux on x64 or arm64, whose flag and ioctl values these are.</summary>
    public static bool IsSupported { get; } =
        OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture is Architecture.X64 or Architecture.Arm64;

    public static IOException Error(string call)
    {
        var errno = Marshal.GetLastPInvokeError();
        return new IOException($"{call} failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})", new System.Net.Sockets.SocketException(errno));
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec
    {
        public byte* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", SetLastError = true)]
    public static partial int pipe2(int* fds, int flags);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int fcntl(int fd, int command, int argument);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint vmsplice(int fd, IoVec* iov, nuint count, uint flags);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint splice(int input, long* inputOffset, int output, long* outputOffset, nuint length, uint flags);

    [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
    public static partial int Poll(PollFd* fds, nuint count, int timeout);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int close(int fd);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint read(int fd, byte* buffer, nuint length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint write(int fd, byte* buffer, nuint length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int ioctl(int fd, nuint request, int* argument);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint recv(int fd, byte* buffer, nuint length, int flags);
}
