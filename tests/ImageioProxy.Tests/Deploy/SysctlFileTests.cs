using ImageioProxy.Configuration;

namespace ImageioProxy.Tests.Deploy;

/// <summary>deploy/sysctl: every key is one this kernel has, and the buffer limits are at least what
/// the proxy asks for its NBD sockets, so installing the file makes Backend:SocketBufferSize count.</summary>
public class SysctlFileTests
{
    private static Dictionary<string, long> ReadSettings()
    {
        var settings = new Dictionary<string, long>();
        foreach (var raw in File.ReadAllLines(DeployFiles.Path("deploy/sysctl/90-imageio-proxy.conf")))
        {
            var line = raw.Trim();
            if (line.Length == 0 || line.StartsWith('#'))
            {
                continue;
            }
            var parts = line.Split('=', 2, StringSplitOptions.TrimEntries);
            parts.Should().HaveCount(2, "sysctl.d lines are key = value: {0}", line);
            settings.Add(parts[0], long.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture));
        }
        return settings;
    }

    [Fact]
    public void Every_key_exists_in_proc_sys()
    {
        var settings = ReadSettings();

        settings.Should().NotBeEmpty();
        settings.Keys.Should().OnlyContain(key => File.Exists("/proc/sys/" + key.Replace('.', '/')), "a misspelt key is silently ignored by sysctl --system");
    }

    [Fact]
    public void The_limits_cover_the_default_NBD_socket_buffer_and_local_clients_get_the_same()
    {
        var settings = ReadSettings();
        var wanted = new BackendOptions().SocketBufferSize;

        settings["net.core.wmem_max"].Should().BeGreaterThanOrEqualTo(wanted);
        settings["net.core.rmem_max"].Should().BeGreaterThanOrEqualTo(wanted);
        settings["net.core.wmem_default"].Should().BeGreaterThanOrEqualTo(wanted, "unix-socket clients never set their own send buffer");
        File.ReadAllText(DeployFiles.Path("docs/operations.md")).Should().Contain("deploy/sysctl/90-imageio-proxy.conf");
    }

    [Fact]
    public void An_unprivileged_service_may_hold_pipes_for_far_more_than_its_in_flight_bytes()
    {
        var settings = ReadSettings();
        var backend = new BackendOptions();

        // Spliced uploads hold a pipe of Backend:ChunkSize per chunk in flight (up to Backend:MaxInFlightBytes),
        // plus idle pipes kept for reuse and one per NBD connection for zero-copy writes.
        var pagesInFlight = backend.MaxInFlightBytes / Environment.SystemPageSize;
        settings["fs.pipe-user-pages-soft"].Should().BeGreaterThanOrEqualTo(4 * pagesInFlight);
        File.ReadAllText(DeployFiles.Path("docs/operations.md")).Should().Contain("fs.pipe-user-pages-soft");
    }
}
