using System.Globalization;
using System.Net;
using System.Security.Cryptography.X509Certificates;
using Microsoft.AspNetCore.Server.Kestrel.Core;

namespace ImageioProxy.Bench;

/// <summary>The HTTP ceiling: a bare Kestrel endpoint that reads every request body and throws it away,
/// with the same Kestrel settings as the proxy (ImageioProxy.Hosting.KestrelTuning), so that
/// "proxy / sink" is the cost of everything the proxy does beyond receiving HTTP. A GET with
/// <c>?size=N</c> answers N bytes from one 1 MiB buffer instead: the same ceiling for downloads (S5).</summary>
internal static class SinkServer
{
    public static async Task<int> RunAsync(string[] args)
    {
        // As the proxy does for itself (its Program.cs), before the first socket operation of this process.
        if (Environment.GetEnvironmentVariable(ImageioProxy.Hosting.KestrelTuning.InlineCompletionsVariable) is null)
        {
            Environment.SetEnvironmentVariable(ImageioProxy.Hosting.KestrelTuning.InlineCompletionsVariable, "1");
        }
        int port = 0;
        string? cert = null, key = null, unixSocket = null;
        var tuned = true;
        var http = new ImageioProxy.Configuration.HttpOptions();
        for (var i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--port": port = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--cert": cert = args[++i]; break;
                case "--key": key = args[++i]; break;
                case "--unix": unixSocket = args[++i]; break;
                case "--kestrel-defaults": tuned = false; break;
                case "--block-size": http.PoolBlockSize = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--request-buffer": http.MaxRequestBufferSize = long.Parse(args[++i], CultureInfo.InvariantCulture); break;
                default: throw new ArgumentException($"sink: unknown argument {args[i]}");
            }
        }
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        if (tuned)
        {
            ImageioProxy.Hosting.KestrelTuning.AddServices(builder.Services, http);
        }
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Limits.MaxRequestBodySize = null;
            if (tuned)
            {
                ImageioProxy.Hosting.KestrelTuning.ApplyLimits(kestrel, http);
            }
            kestrel.Listen(IPAddress.Loopback, port, listen =>
            {
                listen.Protocols = HttpProtocols.Http1;
                if (cert is not null && key is not null)
                {
                    using var pem = X509Certificate2.CreateFromPemFile(cert, key);
                    var certificate = X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pkcs12), null);
                    listen.UseHttps(https => https.ServerCertificate = certificate);
                }
            });
            if (unixSocket is not null)
            {
                // S4's ceiling: plain HTTP on a unix socket, as the proxy's Local listener.
                kestrel.ListenUnixSocket(unixSocket, listen => listen.Protocols = HttpProtocols.Http1);
            }
        });
        var app = builder.Build();
        var source = new byte[1 << 20];
        new Random(5).NextBytes(source);
        app.Run(async http =>
        {
            if (HttpMethods.IsGet(http.Request.Method))
            {
                if (!long.TryParse(http.Request.Query["size"], NumberStyles.None, CultureInfo.InvariantCulture, out var size))
                {
                    http.Response.StatusCode = StatusCodes.Status400BadRequest;
                    await http.Response.WriteAsync("sink: GET needs ?size=BYTES\n");
                    return;
                }
                http.Response.ContentLength = size;
                for (var sent = 0L; sent < size;)
                {
                    var n = (int)Math.Min(source.Length, size - sent);
                    await http.Response.Body.WriteAsync(source.AsMemory(0, n), http.RequestAborted); // as the proxy's GET writes
                    sent += n;
                }
                return;
            }
            var reader = http.Request.BodyReader;
            while (true)
            {
                var result = await reader.ReadAsync(http.RequestAborted);
                reader.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted)
                {
                    break;
                }
            }
            http.Response.StatusCode = StatusCodes.Status200OK;
        });
        await app.RunAsync();
        return 0;
    }
}
