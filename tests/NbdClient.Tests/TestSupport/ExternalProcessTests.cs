using TestSupport;

namespace NbdClient.Tests.TestSupport;

public class ExternalProcessTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task RunAsync_CapturesStdoutStderrAndExitCode()
    {
        var result = await ExternalProcess.RunAsync("/bin/sh", ["-c", "echo out; echo err >&2; exit 3"]);

        result.ExitCode.Should().Be(3);
        result.StandardOutput.Should().Be("out\n");
        result.StandardError.Should().Be("err\n");
        var act = () => result.EnsureSuccess();
        act.Should().Throw<ExternalProcessException>().WithMessage("*exit code 3*err*");
    }

    [Fact]
    public async Task RunAsync_PassesArgumentsWithoutAShell()
    {
        var result = await ExternalProcess.RunAsync("/bin/echo", ["a b", "$HOME", "*"]);
        result.EnsureSuccess().StandardOutput.Should().Be("a b $HOME *\n");
    }

    [Fact]
    public async Task RunAsync_SetsAndRemovesEnvironmentVariables()
    {
        var options = new ExternalProcessOptions { Environment = new Dictionary<string, string?> { ["TS_SET"] = "yes", ["HOME"] = null } };
        var result = await ExternalProcess.RunAsync("/bin/sh", ["-c", "echo \"$TS_SET/${HOME:-unset}\""], options: options);
        result.StandardOutput.Should().Be("yes/unset\n");
    }

    [Fact]
    public async Task RunAsync_Timeout_KillsAndThrows()
    {
        var act = () => ExternalProcess.RunAsync("/bin/sleep", ["60"], TimeSpan.FromMilliseconds(200));
        await act.Should().ThrowAsync<TimeoutException>().WithMessage("*killed*sleep 60*");
    }

    [Theory]
    [InlineData(ProcessSignal.Terminate, 128 + 15)]
    [InlineData(ProcessSignal.Kill, 128 + 9)]
    public async Task Kill_DeliversTheSignal(ProcessSignal signal, int expectedExitCode)
    {
        await using var process = ExternalProcess.Start("/bin/sleep", ["60"]);
        process.HasExited.Should().BeFalse();

        process.Kill(signal);

        (await process.WaitForExitAsync(Wait)).Should().Be(expectedExitCode);
        process.ExitCode.Should().Be(expectedExitCode);
    }

    [Fact]
    public async Task WaitForUnixSocket_ProcessExitsFirst_FailsWithItsOutput()
    {
        using var dir = TempDirectory.Create();
        await using var process = ExternalProcess.Start("/bin/sh", ["-c", "echo listening failed: boom >&2; exit 4"]);

        var act = () => process.WaitForUnixSocketAsync(dir.SocketPath(), Wait);

        (await act.Should().ThrowAsync<ExternalProcessException>()).WithMessage("*exited before*exit code 4*listening failed: boom*");
    }

    [Fact]
    public async Task WaitForUnixSocket_ReturnsOnceAServerListens()
    {
        using var dir = TempDirectory.Create();
        var socket = dir.SocketPath();
        await using var process = ExternalProcess.Start("socat", [$"UNIX-LISTEN:{socket},fork", "SYSTEM:true"]);

        await process.WaitForUnixSocketAsync(socket, Wait);

        File.Exists(socket).Should().BeTrue();
        process.HasExited.Should().BeFalse();
    }

    [Fact]
    public async Task Output_IsBounded_KeepingStartAndEnd()
    {
        await using var process = ExternalProcess.Start(
            "/bin/sh", ["-c", "echo first; i=0; while [ $i -lt 5000 ]; do echo line $i; i=$((i+1)); done; echo last"],
            new ExternalProcessOptions { OutputLimit = 1000 });

        (await process.WaitForExitAsync(Wait)).Should().Be(0);

        process.Output.Length.Should().BeLessThan(1100);
        process.Output.Should().StartWith("first\n").And.Contain("characters dropped").And.EndWith("last\n");
    }

    [Fact]
    public async Task DisposeAsync_KillsTheProcessTree()
    {
        using var dir = TempDirectory.Create();
        var childPidFile = dir.Combine("child.pid");
        var process = ExternalProcess.Start("/bin/sh", ["-c", $"sleep 60 & echo $! > {childPidFile}; wait"]);
        var childPid = int.Parse(await process.WaitForFileAsync(childPidFile, Wait));

        await process.DisposeAsync();

        process.HasExited.Should().BeTrue();
        // The child was reaped by init once killed; it must be gone (or a zombie on its way out).
        var status = File.Exists($"/proc/{childPid}/status") ? File.ReadAllText($"/proc/{childPid}/status") : "";
        status.Should().NotContain("State:\tS", "the sleeping grandchild must have been killed with the tree");
    }
}
