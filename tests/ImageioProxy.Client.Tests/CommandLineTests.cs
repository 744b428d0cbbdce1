using System.Text.Json;
using ImageioProxy.Client.Tests.Support;
using ImageioProxy.Tests.Support;
using TestSupport;

namespace ImageioProxy.Client.Tests;

/// <summary>The command line, in-process (parsing, exit codes, output) and as a child process (Ctrl-C).</summary>
public sealed class CommandLineTests(ProxyFixture proxy) : IClassFixture<ProxyFixture>, IDisposable
{
    private static readonly TimeSpan Bound = TimeSpan.FromMinutes(2);
    private readonly TempDirectory _directory = TempDirectory.Create("ipxc");

    public void Dispose() => _directory.Dispose();

    private static async Task<(int Status, string Stdout, string Stderr)> RunAsync(params string[] args)
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var status = await ClientCommandLine.InvokeAsync(args, stdout, stderr, isTerminal: false, handleSignals: false, CancellationToken.None).WaitAsync(Bound);
        return (status, stdout.ToString(), stderr.ToString());
    }

    [Theory]
    [InlineData("8388608", 8388608)]
    [InlineData("8M", 8388608)]
    [InlineData("8MiB", 8388608)]
    [InlineData("512k", 524288)]
    [InlineData("1G", 1073741824)]
    public void TryParseSize_AcceptsBinarySuffixes(string text, long expected)
    {
        ClientCommandLine.TryParseSize(text, out var size).Should().BeTrue();
        size.Should().Be(expected);
    }

    [Theory]
    [InlineData("")]
    [InlineData("-1")]
    [InlineData("8X")]
    [InlineData("1.5M")]
    public void TryParseSize_RejectsOthers(string text)
    {
        ClientCommandLine.TryParseSize(text, out _).Should().BeFalse();
    }

    [Theory]
    [InlineData("upload", "only-one-argument")]
    [InlineData("upload", "disk.raw", "ftp://host/images/x")]
    [InlineData("download", "http://host/images/x", "out.raw", "--format", "vmdk")]
    [InlineData("upload", "disk.raw", "http://host/images/x", "--chunk-size", "lots")]
    [InlineData("frobnicate")]
    public async Task UsageErrors_ExitWith2(params string[] args)
    {
        var (status, _, stderr) = await RunAsync(args);

        status.Should().Be(ClientCommandLine.ExitUsage);
        stderr.Should().Contain("imageio-client:");
    }

    [Fact]
    public async Task Upload_Json_PrintsProgressLinesAndExits0()
    {
        var (raw, image) = await ClientTestImages.CreateAsync(_directory.Path, ProxyFixture.DefaultImageSize, seed: 51, "qcow2");
        var ticket = await proxy.AddTicketAsync();

        var (status, stdout, stderr) = await RunAsync("upload", image, proxy.ImageUrl(ticket), "--output", "json", "--max-workers", "2", "--chunk-size", "2M");

        status.Should().Be(0, stderr);
        var lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        lines.Select(l => l.GetProperty("description").GetString()).Should().Contain(["inspecting image", "uploading image", "upload completed"]);
        lines[^1].GetProperty("transferred").GetInt64().Should().Be(ProxyFixture.DefaultImageSize);
        lines[^1].GetProperty("size").GetInt64().Should().Be(ProxyFixture.DefaultImageSize);
        (await QemuImg.CompareAsync(raw, proxy.NbdUri)).Identical.Should().BeTrue();
    }

    [Fact]
    public async Task Checksum_PrintsImageioJson_AndInfoDescribesTheTicket()
    {
        var (raw, _) = await ClientTestImages.CreateAsync(_directory.Path, ProxyFixture.DefaultImageSize, seed: 52);
        var ticket = await proxy.AddTicketAsync();
        (await RunAsync("upload", raw, proxy.ImageUrl(ticket), "--output", "none")).Status.Should().Be(0);

        var local = await RunAsync("checksum", raw);
        var remote = await RunAsync("checksum", proxy.ImageUrl(ticket));
        var info = await RunAsync("info", proxy.ImageUrl(ticket), "--output", "json");

        local.Status.Should().Be(0, local.Stderr);
        using var localJson = JsonDocument.Parse(local.Stdout);
        localJson.RootElement.GetProperty("algorithm").GetString().Should().Be("blake2b");
        localJson.RootElement.GetProperty("block_size").GetInt32().Should().Be(4 * 1024 * 1024);
        remote.Stdout.Should().Be(local.Stdout);
        info.Status.Should().Be(0, info.Stderr);
        using var infoJson = JsonDocument.Parse(info.Stdout);
        infoJson.RootElement.GetProperty("size").GetInt64().Should().Be(ProxyFixture.DefaultImageSize);
        infoJson.RootElement.GetProperty("max_writers").GetInt32().Should().BeGreaterThan(0);
    }

    [Fact]
    public async Task Upload_ToAReadOnlyTicket_Exits1WithTheReason()
    {
        var (_, image) = await ClientTestImages.CreateAsync(_directory.Path, 1024 * 1024, seed: 53);
        var ticket = await proxy.AddTicketAsync(ops: ["read"]);

        var (status, _, stderr) = await RunAsync("upload", image, proxy.ImageUrl(ticket));

        status.Should().Be(ClientCommandLine.ExitFailure);
        stderr.Should().Contain("upload failed").And.Contain("read-only");
    }

    [Fact]
    public async Task Download_Interrupted_WithCtrlC_Exits130AndLeavesNoFile()
    {
        await using var stub = await StubImageioServer.StartAsync(8 * 1024 * 1024, ["extents"]);
        new Random(54).NextBytes(stub.Image);
        stub.BlockGetsFrom = 2;
        var destination = _directory.Combine("copy.raw");
        await using var client = ExternalProcess.Start("dotnet",
            [ClientAssembly, "download", stub.Url(), destination, "--chunk-size", "1M", "--output", "json"]);

        await stub.RequestBlocked.Task.WaitAsync(Bound);
        client.Kill(ProcessSignal.Interrupt);
        var status = await client.WaitForExitAsync(Bound);

        status.Should().Be(ClientCommandLine.ExitInterrupted, client.Output);
        client.Output.Should().Contain("download interrupted");
        Directory.GetFiles(_directory.Path).Should().BeEmpty();
    }

    [Fact]
    public async Task Upload_Interrupted_WithSigterm_Exits130AndStopsItsQemuNbd()
    {
        await using var stub = await StubImageioServer.StartAsync(8 * 1024 * 1024, ["extents", "zero", "flush"]);
        stub.BlockPutsFrom = 2;
        var (_, image) = await ClientTestImages.CreateAsync(_directory.Path, 8 * 1024 * 1024, seed: 55, zeroFraction: 0);
        await using var client = ExternalProcess.Start("dotnet", [ClientAssembly, "upload", image, stub.Url(), "--chunk-size", "1M"]);

        await stub.RequestBlocked.Task.WaitAsync(Bound);
        client.Kill(ProcessSignal.Terminate);
        var status = await client.WaitForExitAsync(Bound);

        status.Should().Be(ClientCommandLine.ExitInterrupted, client.Output);
        client.Output.Should().Contain("upload interrupted");
        ClientTestImages.QemuNbdProcessesServing(image).Should().BeEmpty();
        stub.Requests.Should().NotContain("PATCH flush");
    }

    private static string ClientAssembly => Path.Combine(AppContext.BaseDirectory, "ImageioProxy.Client.dll");
}
