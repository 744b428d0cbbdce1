using BenchmarkDotNet.Running;

namespace ImageioProxy.MicroBench;

internal static class MicroBenchMain
{
    public static void Main(string[] args) => BenchmarkSwitcher.FromAssembly(typeof(MicroBenchMain).Assembly).Run(args);
}
