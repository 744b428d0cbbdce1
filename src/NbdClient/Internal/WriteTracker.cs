namespace NbdClient.Internal;

/// <summary>Numbers write-like requests in submission order and lets a caller wait until every request
/// numbered up to a point has been answered: the first half of the flush barrier
/// (nbd-client-spec.md §8: "MUST NOT issue an NBD_CMD_FLUSH until it has received the reply for all
/// write commands which it expects to be covered by the flush"). Requests submitted after the wait
/// began are not waited for, so a stream of new writes cannot starve a flush.</summary>
internal sealed class WriteTracker
{
    private readonly Lock _lock = new();
    private readonly SortedSet<long> _outstanding = [];
    private readonly List<Waiter> _waiters = [];
    private long _last;

    private sealed class Waiter(long through)
    {
        public long Through { get; } = through;
        public Exception? Failure { get; set; }
        public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    /// <summary>Registers a new write-like request and returns its sequence number.</summary>
    public long Begin()
    {
        lock (_lock)
        {
            var sequence = ++_last;
            _outstanding.Add(sequence);
            return sequence;
        }
    }

    /// <summary>Marks a request answered; a failure fails every waiter that covers it.</summary>
    public void End(long sequence, Exception? failure)
    {
        List<Waiter>? ready = null;
        lock (_lock)
        {
            if (!_outstanding.Remove(sequence))
                return;
            var oldest = _outstanding.Count == 0 ? long.MaxValue : _outstanding.Min;
            for (var i = _waiters.Count - 1; i >= 0; i--)
            {
                var waiter = _waiters[i];
                if (failure is not null && waiter.Through >= sequence)
                    waiter.Failure ??= failure;
                if (waiter.Through < oldest)
                {
                    (ready ??= []).Add(waiter);
                    _waiters.RemoveAt(i);
                }
            }
        }
        if (ready is null)
            return;
        foreach (var waiter in ready)
        {
            if (waiter.Failure is null)
                waiter.Done.TrySetResult();
            else
                waiter.Done.TrySetException(waiter.Failure);
        }
    }

    /// <summary>Write-like requests begun and not yet ended.</summary>
    public int Outstanding
    {
        get
        {
            lock (_lock)
                return _outstanding.Count;
        }
    }

    /// <summary>Completes when every request begun before this call has ended; faults with the first
    /// failure among them.</summary>
    public Task WaitForOutstandingAsync(CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (_outstanding.Count == 0)
                return Task.CompletedTask;
            var waiter = new Waiter(_last);
            _waiters.Add(waiter);
            return waiter.Done.Task.WaitAsync(cancellationToken);
        }
    }
}
