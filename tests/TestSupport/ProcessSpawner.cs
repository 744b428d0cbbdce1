using System.Collections.Concurrent;
using System.Diagnostics;

namespace TestSupport;

/// <summary>Starts processes from one dedicated thread that lives as long as the test host.</summary>
/// <remarks>
/// Linux delivers PR_SET_PDEATHSIG (nbdkit --exit-with-parent) when the parent *thread* exits, not the
/// parent process. .NET forks from the calling thread, and thread-pool threads retire after about 20 s
/// idle, which would SIGTERM a server in the middle of a test. Forking from a thread that never exits
/// keeps "exit with parent" meaning "exit with the test host".
/// </remarks>
internal static class ProcessSpawner
{
    private static readonly BlockingCollection<(Process Process, TaskCompletionSource Started)> Queue = [];

    static ProcessSpawner()
    {
        var thread = new Thread(Run) { IsBackground = true, Name = "TestSupport process spawner" };
        thread.Start();
    }

    public static void Start(Process process)
    {
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Queue.Add((process, started));
        // Process.Start is quick (fork + exec); block the caller rather than make every Start async.
        started.Task.GetAwaiter().GetResult();
    }

    private static void Run()
    {
        foreach (var (process, started) in Queue.GetConsumingEnumerable())
        {
            try
            {
                process.Start();
                started.SetResult();
            }
            catch (Exception e)
            {
                started.SetException(e);
            }
        }
    }
}
