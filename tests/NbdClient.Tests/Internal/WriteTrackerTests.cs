using NbdClient.Internal;

namespace NbdClient.Tests.Internal;

public class WriteTrackerTests
{
    [Fact]
    public async Task Wait_CompletesImmediately_WhenNothingIsOutstanding()
    {
        var tracker = new WriteTracker();
        await tracker.WaitForOutstandingAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task Wait_CoversOnlyWritesBegunBeforeIt()
    {
        var tracker = new WriteTracker();
        var first = tracker.Begin();
        var second = tracker.Begin();
        var barrier = tracker.WaitForOutstandingAsync(CancellationToken.None);
        var later = tracker.Begin(); // arrives after the barrier: must not hold it up

        tracker.End(second, null);
        barrier.IsCompleted.Should().BeFalse("the first write is still outstanding");
        tracker.End(first, null);
        await barrier.WaitAsync(TimeSpan.FromSeconds(5));
        tracker.Outstanding.Should().Be(1);
        tracker.End(later, null);
        tracker.Outstanding.Should().Be(0);
    }

    [Fact]
    public async Task Wait_Faults_WhenACoveredWriteFailed()
    {
        var tracker = new WriteTracker();
        var write = tracker.Begin();
        var barrier = tracker.WaitForOutstandingAsync(CancellationToken.None);
        var failure = new NbdException("boom");
        tracker.End(write, failure);
        var act = () => barrier.WaitAsync(TimeSpan.FromSeconds(5));
        (await act.Should().ThrowAsync<NbdException>()).Which.Should().BeSameAs(failure);
    }

    [Fact]
    public async Task Wait_IgnoresFailuresOfLaterWrites()
    {
        var tracker = new WriteTracker();
        var covered = tracker.Begin();
        var barrier = tracker.WaitForOutstandingAsync(CancellationToken.None);
        var later = tracker.Begin();
        tracker.End(later, new NbdException("not covered"));
        tracker.End(covered, null);
        await barrier.WaitAsync(TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task ManyBarriers_CompleteInOrder()
    {
        var tracker = new WriteTracker();
        var writes = Enumerable.Range(0, 10).Select(_ => tracker.Begin()).ToList();
        var barriers = new List<Task>();
        for (var i = 0; i < 10; i++)
        {
            barriers.Add(tracker.WaitForOutstandingAsync(CancellationToken.None));
            writes.Add(tracker.Begin());
        }
        // End everything in reverse: nothing completes until the oldest write ends.
        for (var i = writes.Count - 1; i >= 1; i--)
            tracker.End(writes[i], null);
        barriers.Should().OnlyContain(b => !b.IsCompleted);
        tracker.End(writes[0], null);
        await Task.WhenAll(barriers).WaitAsync(TimeSpan.FromSeconds(5));
    }
}
