using ImageioProxy.Hosting;

// ImageioProxy [--Section:Key=value ...]            serve (imageio's daemon)
// ImageioProxy serve-image IMAGE [--size SIZE] [--format raw|qcow2] [--Section:Key=value ...]
if (args.Length > 0 && args[0] == "serve-image")
{
    return await ServeImageCommand.RunAsync(args[1..]);
}

await using var server = ProxyServer.Create(args);
await server.StartAsync();
await server.WaitForShutdownSignalAsync();
await server.StopAsync();
return 0;

/// <summary>Entry point, visible to tests.</summary>
public partial class Program;
