namespace ImageioProxy.Client;

/// <summary>The <c>imageio-client</c> dotnet tool.</summary>
internal static class ClientProgram
{
    public static Task<int> Main(string[] args) => ClientCommandLine.RunAsync(args);
}
