using System.Text.Json;

namespace ImageioProxy.Tests.Deploy;

/// <summary>deploy/compose.yaml and deploy/kubernetes/ parse, and agree with the Dockerfile: the sidecar
/// shares the socket volume, probes use the monitoring port's health paths, the ticket arrives where the
/// image's CMD reads it, and the grace period outlasts the host's shutdown timeout.</summary>
public class OrchestrationFilesTests
{
    private static readonly DockerfileStage Image = DockerfileStage.ParseFinalStage(DeployFiles.Path("Dockerfile"));

    [Fact]
    public async Task Compose_runs_the_proxy_next_to_a_qemu_nbd_sidecar_sharing_the_socket_volume()
    {
        var compose = (await DeployFiles.LoadYamlAsync("deploy/compose.yaml")).Single();
        var services = compose.GetProperty("services");
        var proxy = services.GetProperty("imageio-proxy");
        var sidecar = services.GetProperty("qemu-nbd");

        Strings(proxy.GetProperty("volumes")).Should().Contain("sockets:/run/imageio-proxy");
        Strings(sidecar.GetProperty("volumes")).Should().Contain("sockets:/run/imageio-proxy");
        Strings(sidecar.GetProperty("command")).Should().Contain("--socket=/run/imageio-proxy/nbd.sock");
        Strings(proxy.GetProperty("secrets")).Should().Contain("ticket");
        Image.Command.Should().Contain("--Daemon:TicketFile=/run/secrets/ticket", "compose mounts the secret there");
        proxy.GetProperty("read_only").GetBoolean().Should().BeTrue();
        Strings(proxy.GetProperty("ports")).Should().Contain(p => p.EndsWith($":{Image.Environment["Remote__Port"]}", StringComparison.Ordinal))
            .And.Contain(p => p.EndsWith($":{Image.Environment["Monitoring__Port"]}", StringComparison.Ordinal));
        proxy.GetProperty("stop_grace_period").GetString().Should().Be("60s");
    }

    [Fact]
    public async Task Kubernetes_deployment_probes_the_monitoring_port_and_terminates_gracefully()
    {
        var documents = await DeployFiles.LoadYamlAsync("deploy/kubernetes/imageio-proxy.yaml");
        var deployment = documents.Single(d => d.GetProperty("kind").GetString() == "Deployment");
        var pod = deployment.GetProperty("spec").GetProperty("template").GetProperty("spec");
        var containers = pod.GetProperty("containers").EnumerateArray().ToList();
        var proxy = containers.Single(c => c.GetProperty("name").GetString() == "imageio-proxy");
        var sidecar = containers.Single(c => c.GetProperty("name").GetString() == "qemu-nbd");

        Strings(sidecar.GetProperty("args")).Should().Contain("--socket=/run/imageio-proxy/nbd.sock");
        Mounts(proxy).Should().Contain("sockets:/run/imageio-proxy").And.Contain("ticket:/run/secrets");
        Mounts(sidecar).Should().Contain("sockets:/run/imageio-proxy");
        var ports = proxy.GetProperty("ports").EnumerateArray().ToDictionary(p => p.GetProperty("name").GetString()!, p => p.GetProperty("containerPort").GetInt32());
        ports["data"].ToString(System.Globalization.CultureInfo.InvariantCulture).Should().Be(Image.Environment["Remote__Port"]);
        ports["monitoring"].ToString(System.Globalization.CultureInfo.InvariantCulture).Should().Be(Image.Environment["Monitoring__Port"]);
        Probe(proxy, "readinessProbe").Should().Be("/health/ready@monitoring");
        Probe(proxy, "startupProbe").Should().Be("/health/ready@monitoring");
        Probe(proxy, "livenessProbe").Should().Be("/health/live@monitoring");
        proxy.GetProperty("securityContext").GetProperty("readOnlyRootFilesystem").GetBoolean().Should().BeTrue();
        pod.GetProperty("securityContext").GetProperty("runAsUser").GetInt32().Should().Be(1654, "the .NET images' app user");
        var shutdown = proxy.GetProperty("env").EnumerateArray().Single(e => e.GetProperty("name").GetString() == "Daemon__ShutdownTimeout");
        pod.GetProperty("terminationGracePeriodSeconds").GetInt32().Should()
            .BeGreaterThan(int.Parse(shutdown.GetProperty("value").GetString()!, System.Globalization.CultureInfo.InvariantCulture) + 5);
        var ingress = documents.Single(d => d.GetProperty("kind").GetString() == "Ingress").GetProperty("metadata").GetProperty("annotations");
        ingress.GetProperty("nginx.ingress.kubernetes.io/proxy-body-size").GetString().Should().Be("0");
        ingress.GetProperty("nginx.ingress.kubernetes.io/proxy-request-buffering").GetString().Should().Be("off");
    }

    [Fact]
    public void The_qemu_nbd_sidecar_keeps_its_request_buffers_on_a_heap_that_is_not_trimmed_between_requests()
    {
        var sidecar = DockerfileStage.ParseFinalStage(DeployFiles.Path("deploy/qemu-nbd/Dockerfile"));

        var tunables = sidecar.Environment["GLIBC_TUNABLES"].Split(':').Select(t => t.Split('=')).ToDictionary(t => t[0], t => long.Parse(t[1], System.Globalization.CultureInfo.InvariantCulture));
        tunables["glibc.malloc.mmap_threshold"].Should().BeGreaterThanOrEqualTo(32L << 20, "qemu-nbd's largest request is 32 MiB");
        tunables["glibc.malloc.trim_threshold"].Should().BeGreaterThan(tunables["glibc.malloc.mmap_threshold"]);
        sidecar.Entrypoint.Should().Contain("--aio=native");
    }

    private static List<string> Strings(JsonElement array) => [.. array.EnumerateArray().Select(e => e.GetString()!)];

    private static List<string> Mounts(JsonElement container)
        => [.. container.GetProperty("volumeMounts").EnumerateArray().Select(m => $"{m.GetProperty("name").GetString()}:{m.GetProperty("mountPath").GetString()}")];

    private static string Probe(JsonElement container, string name)
    {
        var get = container.GetProperty(name).GetProperty("httpGet");
        return $"{get.GetProperty("path").GetString()}@{get.GetProperty("port").GetString()}";
    }
}
