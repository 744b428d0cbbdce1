using System.Globalization;
using TestSupport;

namespace ImageioProxy.Client.Tests.Support;

/// <summary>Source images and checks shared by the client tests.</summary>
internal static class ClientTestImages
{
    /// <summary>A raw image of data, written zeroes and holes (TestSupport's generator), converted to
    /// <paramref name="format"/> when that is not raw. Returns the raw path (the reference content) and the
    /// path in the requested format.</summary>
    public static async Task<(string Raw, string Image)> CreateAsync(string directory, long size, int seed, string format = "raw", double zeroFraction = 0.5)
    {
        var raw = Path.Combine(directory, $"source-{seed}.raw");
        await QemuImg.WriteRandomImageAsync(raw, size, seed, zeroFraction);
        if (format == "raw")
        {
            return (raw, raw);
        }
        var converted = Path.Combine(directory, $"source-{seed}.{format}");
        await QemuImg.ConvertAsync(raw, "raw", converted, format);
        return (raw, converted);
    }

    /// <summary>qemu-nbd processes still serving <paramref name="path"/> (found in /proc: this machine's
    /// processes, so it proves the client stopped the one it started).</summary>
    public static IReadOnlyList<int> QemuNbdProcessesServing(string path)
    {
        var found = new List<int>();
        foreach (var directory in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(directory), NumberStyles.None, CultureInfo.InvariantCulture, out var pid))
            {
                continue;
            }
            try
            {
                var arguments = File.ReadAllText(Path.Combine(directory, "cmdline")).Split('\0');
                if (arguments.Length > 0 && Path.GetFileName(arguments[0]) == "qemu-nbd" && arguments.Any(a => a.Contains(path, StringComparison.Ordinal)))
                {
                    found.Add(pid);
                }
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
        }
        return found;
    }
}
