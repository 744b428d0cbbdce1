using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using TestSupport;

namespace ImageioProxy.Tests.Deploy;

/// <summary>Paths of the repository's deployment files and of the lint tools scripts/test.sh installs.</summary>
public static class DeployFiles
{
    public static string Root { get; } = FindRoot();

    public static string Path(string relative) => System.IO.Path.Combine(Root, relative);

    /// <summary>A tool from scripts/npm-tools, installed by scripts/test.sh into artifacts/npm-tools.</summary>
    public static string NpmTool(string name)
    {
        var path = Path($"artifacts/npm-tools/node_modules/.bin/{name}");
        if (!File.Exists(path))
        {
            throw new InvalidOperationException($"{path} is missing: run 'bash scripts/test.sh', which installs scripts/npm-tools with npm ci");
        }
        return path;
    }

    /// <summary>Parses YAML (one or more documents) with js-yaml into JSON documents.</summary>
    public static async Task<IReadOnlyList<JsonElement>> LoadYamlAsync(string relative)
    {
        NpmTool("js-yaml");
        var script = "const y=require('js-yaml');const fs=require('fs');"
            + "process.stdout.write(JSON.stringify(y.loadAll(fs.readFileSync(process.argv[1],'utf8'))))";
        var result = (await ExternalProcess.RunAsync("node", ["-e", script, Path(relative)], TimeSpan.FromSeconds(30),
            new ExternalProcessOptions { WorkingDirectory = Path("artifacts/npm-tools"), Environment = new Dictionary<string, string?> { ["NODE_PATH"] = Path("artifacts/npm-tools/node_modules") } }))
            .EnsureSuccess();
        using var document = JsonDocument.Parse(result.StandardOutput);
        return [.. document.RootElement.EnumerateArray().Select(e => e.Clone())];
    }

    /// <summary>A TCP port that was free a moment ago, for processes that cannot report the one they bound.</summary>
    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(System.IO.Path.Combine(dir.FullName, "ImageioProxy.sln")))
            {
                return dir.FullName;
            }
        }
        throw new InvalidOperationException($"no ImageioProxy.sln above {AppContext.BaseDirectory}");
    }
}

/// <summary>`dotnet publish` of the service, once for the test classes that run it as operators do.</summary>
public sealed class PublishedApp : IAsyncLifetime
{
    private TempDirectory? _dir;

    public string Directory => _dir!.Combine("app");

    /// <summary>The apphost, as the Dockerfile's ENTRYPOINT and the systemd unit's ExecStart run it.</summary>
    public string Executable => System.IO.Path.Combine(Directory, "ImageioProxy");

    public async Task InitializeAsync()
    {
        _dir = TempDirectory.Create("ipx-pub");
        // --no-build: publish what scripts/test.sh (or the test build) compiled, in the Dockerfile's configuration.
        (await ExternalProcess.RunAsync("dotnet", ["publish", DeployFiles.Path("src/ImageioProxy/ImageioProxy.csproj"), "--no-build", "-c", "Release",
            "-o", Directory, "--nologo"], TimeSpan.FromMinutes(5))).EnsureSuccess();
    }

    public Task DisposeAsync()
    {
        _dir?.Dispose();
        return Task.CompletedTask;
    }
}

[CollectionDefinition(Name)]
public sealed class PublishedAppCollection : ICollectionFixture<PublishedApp>
{
    public const string Name = "published app";
}
