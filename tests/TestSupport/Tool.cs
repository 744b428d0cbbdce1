using System.Collections.Concurrent;

namespace TestSupport;

/// <summary>Finds the system tools that integration tests run. Tests never skip: a missing tool is an
/// error that names the Debian package to install.</summary>
public static class Tool
{
    // Debian 12 package for each tool the tests use. nbdkit's filters and basic plugins ship in "nbdkit".
    private static readonly Dictionary<string, string> Packages = new(StringComparer.Ordinal)
    {
        ["qemu-img"] = "qemu-utils",
        ["qemu-nbd"] = "qemu-utils",
        ["qemu-io"] = "qemu-utils",
        ["nbdkit"] = "nbdkit",
        ["nbdinfo"] = "libnbd-bin",
        ["nbdcopy"] = "libnbd-bin",
        ["socat"] = "socat",
        ["curl"] = "curl",
        ["openssl"] = "openssl",
        ["nginx"] = "nginx",
    };

    // sbin directories are not in PATH for every user, but nginx lives in /usr/sbin.
    private static readonly string[] ExtraDirectories = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

    private static readonly ConcurrentDictionary<string, string?> Cache = new(StringComparer.Ordinal);

    /// <summary>Full path of <paramref name="name"/>, or throws <see cref="MissingToolException"/>.</summary>
    public static string Require(string name)
        => Find(name) ?? throw new MissingToolException(name, PackageFor(name));

    /// <summary>Full path of <paramref name="name"/> (searched in PATH, then the sbin directories), or null.</summary>
    public static string? Find(string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        return Cache.GetOrAdd(name, static n => Search(n));
    }

    /// <summary>The Debian package that provides <paramref name="name"/> (the tool name itself if unknown).</summary>
    public static string PackageFor(string name) => Packages.GetValueOrDefault(name, name);

    private static string? Search(string name)
    {
        if (name.Contains('/', StringComparison.Ordinal))
        {
            return IsExecutable(name) ? Path.GetFullPath(name) : null;
        }

        var path = Environment.GetEnvironmentVariable("PATH") ?? "/usr/local/bin:/usr/bin:/bin";
        foreach (var dir in path.Split(':', StringSplitOptions.RemoveEmptyEntries).Concat(ExtraDirectories))
        {
            var candidate = Path.Combine(dir, name);
            if (IsExecutable(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    private static bool IsExecutable(string path)
    {
        try
        {
            return File.Exists(path)
                && !OperatingSystem.IsWindows()
                && (File.GetUnixFileMode(path) & (UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute)) != 0;
        }
        catch (IOException)
        {
            return false;
        }
        catch (UnauthorizedAccessException)
        {
            return false;
        }
    }
}

/// <summary>A system tool needed by a test is not installed.</summary>
public sealed class MissingToolException : Exception
{
    public MissingToolException(string tool, string package)
        : base($"'{tool}' is not installed (searched PATH and the sbin directories). "
            + $"Install it with: apt-get install -y {package} — or run 'bash scripts/test.sh' as root, which installs every tool the tests need.")
    {
        Tool = tool;
        Package = package;
    }

    public string Tool { get; }

    public string Package { get; }
}
