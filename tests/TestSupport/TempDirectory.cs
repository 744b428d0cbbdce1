using System.Security.Cryptography;

namespace TestSupport;

/// <summary>A fresh directory directly under /tmp, deleted (recursively) on dispose.</summary>
/// <remarks>
/// Unix socket paths are limited to 107 bytes (sun_path is 108 with the NUL), so the directory name is
/// short (<c>/tmp/ipx-XXXXXXXX</c>) and deliberately ignores TMPDIR, which may point somewhere deep.
/// </remarks>
public sealed class TempDirectory : IDisposable
{
    /// <summary>Longest unix socket path the kernel accepts (sizeof(sun_path) - 1).</summary>
    public const int MaxUnixSocketPathBytes = 107;

    private const string Alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";

    private TempDirectory(string path) => Path = path;

    /// <summary>Absolute path of the directory.</summary>
    public string Path { get; }

    /// <summary>Creates a new empty directory <c>/tmp/{prefix}-XXXXXXXX</c>.</summary>
    public static TempDirectory Create(string prefix = "ipx")
    {
        ArgumentException.ThrowIfNullOrEmpty(prefix);
        for (var attempt = 0; attempt < 100; attempt++)
        {
            var path = $"/tmp/{prefix}-{RandomNumberGenerator.GetString(Alphabet, 8)}";
            if (System.IO.Path.Exists(path))
            {
                continue;
            }

            var info = Directory.CreateDirectory(path);
            if (!OperatingSystem.IsWindows())
            {
                // Owner-only, like mkdtemp: keys and sockets live here.
                info.UnixFileMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
            }

            return new TempDirectory(path);
        }

        throw new IOException($"could not create a unique directory /tmp/{prefix}-XXXXXXXX");
    }

    /// <summary>Path of <paramref name="name"/> inside this directory (nothing is created).</summary>
    public string Combine(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>Creates (if needed) a subdirectory and returns its path.</summary>
    public string CreateSubdirectory(string name) => Directory.CreateDirectory(Combine(name)).FullName;

    /// <summary>Path for a unix socket inside this directory; throws if it would exceed the kernel limit.</summary>
    public string SocketPath(string name = "nbd.sock")
    {
        var path = Combine(name);
        var bytes = System.Text.Encoding.UTF8.GetByteCount(path);
        if (bytes > MaxUnixSocketPathBytes)
        {
            throw new ArgumentException(
                $"unix socket path '{path}' is {bytes} bytes; the limit is {MaxUnixSocketPathBytes}. Use a shorter name.",
                nameof(name));
        }

        return path;
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
        }
        catch (IOException)
        {
            // A server may still be writing a log file into it; leave the rest to the OS.
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    public override string ToString() => Path;
}
