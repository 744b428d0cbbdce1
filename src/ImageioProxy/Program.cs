using ImageioProxy.Hosting;

// Socket completions run on the epoll thread instead of a thread-pool hop each: about 20 % less CPU per
// GiB uploaded (docs/benchmarks.md). The runtime reads this variable once, when the first socket
// operation starts, so it is set before anything else; an operator's own value (e.g. 0) wins.
if (Environment.GetEnvironmentVariable(KestrelTuning.InlineCompletionsVariable) is null)
{
    Environment.SetEnvironmentVariable(KestrelTuning.InlineCompletionsVariable, "1");
}

// ImageioProxy [--Section:Key=value ...]            serve (imageio's daemon)
// ImageioProxy probe URL [TIMEOUT_SECONDS]
// ImageioProxy serve-image IMAGE [--size SIZE] [--format raw|qcow2] [--Section:Key=value ...]
// ImageioProxy upload|download|checksum|info ...   the client (docs/client.md)
if (args.Length > 0 && args[0] == "serve-image")
{
    return await ServeImageCommand.RunAsync(args[1..]);
}
// ImageioProxy probe URL: exit 0 when URL answers 2xx (the container's exec-form HEALTHCHECK).
if (args.Length > 0 && args[0] == "probe")
{
    return await ProbeCommand.RunAsync(args[1..]);
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
