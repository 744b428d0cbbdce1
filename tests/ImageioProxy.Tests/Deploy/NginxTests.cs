using System.Net.Sockets;
using ImageioProxy.Tests.Support;
using TestSupport;

namespace ImageioProxy.Tests.Deploy;

/// <summary>The proxy with a 1 GiB image, trusting 127.0.0.1 (where nginx connects from).</summary>
public sealed class GibProxyFixture : MonitoredProxyFixture
{
    public GibProxyFixture() : base(new Dictionary<string, string?>(), imageSize: 1L << 30)
    {
    }
}

/// <summary>deploy/nginx's template, filled in, in front of the service: a real nginx (Debian's), run as
/// an unprivileged child with its own prefix, configuration, pid and temp paths in a temp directory,
/// TLS on a loopback port. A 1 GiB upload, a flush and a download go through it and the image is compared.</summary>
public class NginxTests(GibProxyFixture fixture) : IClassFixture<GibProxyFixture>
{
    private const long GiB = 1L << 30;

    [Fact]
    public async Task A_1_GiB_upload_flush_and_download_through_nginx_keep_the_image_intact()
    {
        using var dir = TempDirectory.Create("ipx-ngx");
        var certificates = await TlsCertificates.CreateAsync(dir.Combine("tls"));
        var port = DeployFiles.FreePort();
        await using var nginx = await StartNginxAsync(dir, port, certificates, $"127.0.0.1:{fixture.Server.RemotePort}");
        var transfer = $"nginx-{Guid.NewGuid():N}";
        var id = await fixture.AddTicketAsync(changes: t => t["transfer_id"] = transfer);
        var url = $"https://localhost:{port}/images/{id}";
        string[] tls = ["--cacert", certificates.CaCertificate, "--resolve", $"localhost:{port}:127.0.0.1"];
        var source = fixture.CreateSourceFile(GiB, seed: 21);

        var put = await ExternalProcess.RunAsync("curl", [.. tls, "-sS", "-f", "-X", "PUT", "--upload-file", source, url + "?flush=n"], TimeSpan.FromMinutes(5));
        put.ExitCode.Should().Be(0, $"{put}\n{nginx.Output}");
        var flush = await ExternalProcess.RunAsync("curl", [.. tls, "-sS", "-f", "-X", "PATCH", "--data", """{"op":"flush"}""", url], TimeSpan.FromMinutes(5));
        flush.ExitCode.Should().Be(0, flush.ToString());
        (await fixture.CompareAsync(source)).ExitCode.Should().Be(0, "qemu-nbd holds what was uploaded");

        var copy = dir.Combine("download.raw");
        var get = await ExternalProcess.RunAsync("curl", [.. tls, "-sS", "-f", "-o", copy, url], TimeSpan.FromMinutes(5));
        get.ExitCode.Should().Be(0, get.ToString());
        new FileInfo(copy).Length.Should().Be(GiB);
        (await QemuImg.CompareAsync(source, copy)).Identical.Should().BeTrue();

        // The service saw nginx forward the client (X-Forwarded-For from the trusted 127.0.0.1) over TLS.
        // nginx keeps upstream connections alive: stop it, so that they close and log their CLOSE lines.
        nginx.Kill(ProcessSignal.Terminate);
        await nginx.WaitForExitAsync(TimeSpan.FromSeconds(30));
        var close = await fixture.Logs.WaitForAsync(e => e.EventId.Id == 6001 && (string?)e["TransferId"] == transfer && (long)e["WriteBytes"]! == GiB);
        ((string)close["Client"]!).Should().StartWith("127.0.0.1 via 127.0.0.1:");
        var request = await fixture.Logs.WaitForAsync(e => e.EventId.Id == 6002 && (string?)e["ConnectionId"] == (string?)close["ConnectionId"]);
        request["Scheme"].Should().Be("https");
        File.Exists(Path.Combine(dir.Path, "nginx", "logs", "access.log")).Should().BeFalse("access_log off keeps ticket ids out of nginx's logs");
    }

    /// <summary>Fills in the template and starts nginx in the foreground; as root, drops to nobody first.</summary>
    private static async Task<ExternalProcess> StartNginxAsync(TempDirectory dir, int port, TlsCertificates certificates, string upstream)
    {
        var prefix = dir.CreateSubdirectory("nginx");
        Directory.CreateDirectory(Path.Combine(prefix, "logs"));
        var cert = Path.Combine(prefix, "server-cert.pem");
        var key = Path.Combine(prefix, "server-key.pem");
        File.Copy(certificates.ServerCertificate, cert);
        File.Copy(certificates.ServerKey, key);
        var site = (await File.ReadAllTextAsync(DeployFiles.Path("deploy/nginx/imageio-proxy.conf.template")))
            .Replace("${NGINX_LISTEN}", $"127.0.0.1:{port} ssl", StringComparison.Ordinal)
            .Replace("${NGINX_SERVER_NAME}", "localhost", StringComparison.Ordinal)
            .Replace("${NGINX_TLS_CERT}", cert, StringComparison.Ordinal)
            .Replace("${NGINX_TLS_KEY}", key, StringComparison.Ordinal)
            .Replace("${IMAGEIO_PROXY_UPSTREAM}", upstream, StringComparison.Ordinal);
        site.Split('\n').Where(l => !l.TrimStart().StartsWith('#')).Should().NotContain(l => l.Contains("${", StringComparison.Ordinal), "every placeholder is filled");
        await File.WriteAllTextAsync(Path.Combine(prefix, "site.conf"), site);
        var conf = Path.Combine(prefix, "nginx.conf");
        await File.WriteAllTextAsync(conf, $$"""
            worker_processes 1;
            pid {{prefix}}/nginx.pid;
            error_log {{prefix}}/logs/error.log info;
            events { worker_connections 64; }
            http {
                client_body_temp_path {{prefix}}/client_body;
                proxy_temp_path {{prefix}}/proxy;
                fastcgi_temp_path {{prefix}}/fastcgi;
                uwsgi_temp_path {{prefix}}/uwsgi;
                scgi_temp_path {{prefix}}/scgi;
                include {{prefix}}/site.conf;
            }
            """);
        var nginx = Tool.Require("nginx");
        string[] args = ["-p", prefix, "-c", conf, "-e", $"{prefix}/logs/error.log", "-g", "daemon off;"];
        ExternalProcess process;
        if (Environment.UserName == "root")
        {
            // Unprivileged, like any user's nginx: nobody owns the prefix and runs master and worker.
            (await ExternalProcess.RunAsync("chown", ["-R", "65534:65534", dir.Path], TimeSpan.FromSeconds(30))).EnsureSuccess();
            process = ExternalProcess.Start("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", nginx, .. args]);
        }
        else
        {
            process = ExternalProcess.Start(nginx, args);
        }
        try
        {
            for (var i = 0; ; i++)
            {
                if (process.HasExited || i > 250)
                {
                    var log = File.Exists($"{prefix}/logs/error.log") ? File.ReadAllText($"{prefix}/logs/error.log") : "";
                    throw new InvalidOperationException($"nginx did not listen on {port}: {process.Describe()}\n{log}");
                }
                using var probe = new TcpClient();
                try
                {
                    await probe.ConnectAsync("127.0.0.1", port);
                    return process;
                }
                catch (SocketException)
                {
                    await Task.Delay(20);
                }
            }
        }
        catch
        {
            await process.DisposeAsync();
            throw;
        }
    }
}
