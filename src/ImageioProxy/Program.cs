using ImageioProxy.Hosting;

// ImageioProxy [--Section:Key=value ...]            serve (imageio's daemon)
// ImageioProxy serve-image IMAGE [--size SIZE] [--format raw|qcow2] [--Section:Key=value ...]
// ImageioProxy upload|download|checksum|info ...   the client (docs/client.md)
if (args.Length > 0 && args[0] == "serve-image")
{
    return await ServeImageCommand.RunAsync(args[1..]);
}
if (args.Length > 0 && ImageioProxy.Client.ClientCommandLine.Commands.Contains(args[0]))
{
    return await ImageioProxy.Client.ClientCommandLine.RunAsync(args);
}

ProxyServer created;
try
{
    created = ProxyServer.Create(args);
}
catch (InvalidOperationException e) when (e.Message.StartsWith("Invalid configuration", StringComparison.Ordinal))
{
    // Refuse to start with a message an operator can act on, not an unhandled-exception dump.
    await Console.Error.WriteLineAsync($"ImageioProxy: {e.Message}");
    return 2;
}
await using var server = created;
await server.StartAsync();
await server.WaitForShutdownSignalAsync();
await server.StopAsync();
return 0;

/// <summary>Entry point, visible to tests.</summary>
public partial class Program;
