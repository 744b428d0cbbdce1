using System.Text.Json;
using TestSupport;

namespace ImageioProxy.Tests.Deploy;

/// <summary>The container, as far as CI can go without a container engine: the Dockerfiles pass two
/// linters, and the published service runs with the final stage's ENTRYPOINT, CMD and ENV, health
/// check included, next to a real qemu-nbd "sidecar" on the socket volume.</summary>
[Collection(PublishedAppCollection.Name)]
public class ContainerTests(PublishedApp app)
{
    [Theory]
    [InlineData("Dockerfile")]
    [InlineData("deploy/qemu-nbd/Dockerfile")]
    public async Task Dockerfile_passes_dockerfilelint_and_dockerfile_utils(string dockerfile)
    {
        var lint = await ExternalProcess.RunAsync(DeployFiles.NpmTool("dockerfilelint"), [DeployFiles.Path(dockerfile)], TimeSpan.FromMinutes(1));
        var syntax = await ExternalProcess.RunAsync(DeployFiles.NpmTool("dockerfile-utils"), ["lint", DeployFiles.Path(dockerfile)], TimeSpan.FromMinutes(1));

        lint.ExitCode.Should().Be(0, lint.ToString());
        lint.StandardOutput.Should().Contain("None found");
        syntax.ExitCode.Should().Be(0, syntax.ToString());
        syntax.StandardOutput.Trim().Should().BeEmpty(syntax.ToString());
    }

    [Fact]
    public void The_restore_layer_copies_every_project_the_service_references()
    {
        var dockerfile = File.ReadAllText(DeployFiles.Path("Dockerfile"));
        var projects = new SortedSet<string>(StringComparer.Ordinal);
        var pending = new Queue<string>([DeployFiles.Path("src/ImageioProxy/ImageioProxy.csproj")]);
        while (pending.TryDequeue(out var project))
        {
            var name = Path.GetFileNameWithoutExtension(project);
            if (!projects.Add(name))
            {
                continue;
            }
            foreach (System.Text.RegularExpressions.Match reference in System.Text.RegularExpressions.Regex.Matches(File.ReadAllText(project), "ProjectReference Include=\"([^\"]+)\""))
            {
                pending.Enqueue(Path.GetFullPath(Path.Combine(Path.GetDirectoryName(project)!, reference.Groups[1].Value.Replace('\\', '/'))));
            }
        }

        projects.Should().Contain("NbdClient");
        foreach (var name in projects)
        {
            dockerfile.Should().Contain($"COPY src/{name}/{name}.csproj src/{name}/", "dotnet restore in the build stage needs every project file");
        }
    }

    [Fact]
    public void The_published_runtimeconfig_carries_the_measured_runtime_settings()
    {
        // docs/benchmarks.md (first and ninth rounds) and docs/configuration.md, "Runtime settings": what the
        // container and the systemd unit run is the publish output, so that is where the settings must be.
        using var config = JsonDocument.Parse(File.ReadAllText(System.IO.Path.Combine(app.Directory, "ImageioProxy.runtimeconfig.json")));
        var properties = config.RootElement.GetProperty("runtimeOptions").GetProperty("configProperties");

        properties.GetProperty("System.Runtime.TieredPGO").GetBoolean().Should().BeFalse();
        properties.GetProperty("System.GC.Server").GetBoolean().Should().BeFalse();
        properties.GetProperty("System.GC.Concurrent").GetBoolean().Should().BeFalse();
        properties.GetProperty("System.Threading.ThreadPool.UnfairSemaphoreSpinLimit").GetInt32().Should().Be(0);
    }

    [Fact]
    public void The_image_runs_as_non_root_with_exec_form_entrypoint_and_healthcheck()
    {
        var stage = DockerfileStage.ParseFinalStage(DeployFiles.Path("Dockerfile"));

        stage.From.Should().Contain("dotnet/aspnet").And.Contain("chiseled");
        stage.User.Should().Be("$APP_UID");
        stage.Entrypoint.Should().Equal("/app/ImageioProxy");
        stage.Healthcheck.Should().HaveCount(3).And.StartWith("/app/ImageioProxy");
        stage.Environment["DOTNET_EnableDiagnostics"].Should().Be("0", "a read-only root has no writable /tmp for the diagnostics socket");
        stage.Expose.Should().BeEquivalentTo(stage.Environment["Remote__Port"], stage.Environment["Monitoring__Port"]);
    }

    [Fact]
    public async Task The_published_app_started_like_the_container_serves_health_and_an_upload()
    {
        var stage = DockerfileStage.ParseFinalStage(DeployFiles.Path("Dockerfile"));
        using var dir = TempDirectory.Create("ipx-ctr");
        var size = 8L << 20;
        await QemuImg.CreateAsync(dir.Combine("disk.img"), "raw", size);
        await using var sidecar = await QemuNbdServer.StartAsync(dir.Combine("disk.img"));
        var ticketId = Guid.NewGuid().ToString();
        var secrets = dir.CreateSubdirectory("secrets");
        // The ticket compose.yaml's comment tells operators to write.
        await File.WriteAllTextAsync(Path.Combine(secrets, "ticket"), JsonSerializer.Serialize(new
        {
            uuid = ticketId, size, ops = new[] { "read", "write" }, timeout = 86400, inactivity_timeout = 3600,
            url = $"nbd:unix:{sidecar.SocketPath}", transfer_id = "compose",
        }));

        // `docker run -e` overrides for what must differ on a shared machine: the two ports.
        var dataPort = DeployFiles.FreePort();
        var monitoringPort = DeployFiles.FreePort();
        var environment = stage.Environment.ToDictionary(p => p.Key, p => (string?)p.Value);
        environment["Remote__Port"] = dataPort.ToString(System.Globalization.CultureInfo.InvariantCulture);
        environment["Monitoring__Port"] = monitoringPort.ToString(System.Globalization.CultureInfo.InvariantCulture);
        string Map(string arg) => arg.Replace("/app/", app.Directory + "/", StringComparison.Ordinal)
            .Replace("/run/secrets/", secrets + "/", StringComparison.Ordinal)
            .Replace(":" + stage.Environment["Monitoring__Port"] + "/", $":{monitoringPort}/", StringComparison.Ordinal);
        var command = stage.Entrypoint.Concat(stage.Command).Select(Map).ToList();

        await using var service = ExternalProcess.Start(command[0], command.Skip(1),
            new ExternalProcessOptions { Environment = environment, WorkingDirectory = app.Directory });
        var health = stage.Healthcheck.Select(Map).ToList();
        var probe = await PollUntilAsync(() => ExternalProcess.RunAsync(health[0], health.Skip(1), TimeSpan.FromSeconds(20)), r => r.ExitCode == 0, service);
        probe.StandardOutput.Should().Contain("200 Healthy");

        var url = $"http://127.0.0.1:{dataPort}/images/{ticketId}";
        var source = dir.Combine("source.raw");
        await File.WriteAllBytesAsync(source, Enumerable.Range(0, (int)size).Select(i => (byte)(i * 7 % 251)).ToArray());
        var put = await ExternalProcess.RunAsync("curl", ["-sS", "-f", "-X", "PUT", "--upload-file", source, url], TimeSpan.FromMinutes(1));
        put.ExitCode.Should().Be(0, put.ToString());
        (await QemuImg.CompareAsync(source, sidecar.Uri)).Identical.Should().BeTrue();
        service.Output.Should().Contain("\"EventId\":6001", "the JSON console formatter of the image logs a CLOSE line").And.NotContain(ticketId);

        service.Kill(ProcessSignal.Terminate);
        (await service.WaitForExitAsync(TimeSpan.FromSeconds(60))).Should().Be(0, service.Describe());
    }

    private static async Task<ProcessResult> PollUntilAsync(Func<Task<ProcessResult>> run, Func<ProcessResult, bool> done, ExternalProcess service)
    {
        ProcessResult? last = null;
        for (var i = 0; i < 100; i++)
        {
            if (service.HasExited)
            {
                throw new InvalidOperationException($"the service exited: {service.Describe()}");
            }
            last = await run();
            if (done(last))
            {
                return last;
            }
            await Task.Delay(200);
        }
        throw new TimeoutException($"not healthy after 100 probes; last: {last}\n{service.Describe()}");
    }
}
