using TestSupport;

namespace NbdClient.Tests.TestSupport;

public class TempDirectoryAndToolTests
{
    [Fact]
    public void TempDirectory_IsShortUnderTmp_AndDeletedOnDispose()
    {
        string path;
        using (var dir = TempDirectory.Create())
        {
            path = dir.Path;
            path.Should().StartWith("/tmp/ipx-");
            Directory.Exists(path).Should().BeTrue();
            File.WriteAllText(dir.Combine("file"), "x");
            Directory.CreateDirectory(dir.Combine("sub/deeper"));
            dir.SocketPath().Length.Should().BeLessThan(40);
        }

        Directory.Exists(path).Should().BeFalse();
    }

    [Fact]
    public void SocketPath_TooLongForSunPath_Throws()
    {
        using var dir = TempDirectory.Create();
        var act = () => dir.SocketPath(new string('s', 120));
        act.Should().Throw<ArgumentException>().WithMessage("*the limit is 107*");
    }

    [Fact]
    public void Require_InstalledTool_ReturnsExecutablePath()
    {
        var path = Tool.Require("qemu-nbd");
        Path.IsPathRooted(path).Should().BeTrue();
        File.Exists(path).Should().BeTrue();
    }

    [Fact]
    public void Require_MissingTool_ThrowsWithInstallCommand()
    {
        var act = () => Tool.Require("no-such-tool-4711");
        act.Should().Throw<MissingToolException>()
            .WithMessage("*apt-get install -y no-such-tool-4711*")
            .Which.Tool.Should().Be("no-such-tool-4711");
        Tool.PackageFor("nbdinfo").Should().Be("libnbd-bin");
        Tool.PackageFor("qemu-img").Should().Be("qemu-utils");
    }
}
