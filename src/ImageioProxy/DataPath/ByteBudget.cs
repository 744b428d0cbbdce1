namespace ImageioProxy.DataPath;

/// <summary>An async counting limit on bytes in flight. Waiters are served in FIFO order, so a large
/// request is not starved by small ones. A request larger than the capacity is clamped to it.</summary>
public sealed class ByteBudget
{
    private readonly Lock _lock = new();
    private readonly LinkedList<Waiter> _waiters = new();
    private long _available;

    public ByteBudget(long capacity)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        Capacity = capacity;
        _available = capacity;
    }

    public long Capacity { get; }

    public long Available
    {
        get { lock (_lock) { return _available; } }
    }

    /// <summary>Bytes taken and not yet released. Every pooled transfer buffer holds its size here
    /// until it is returned, so 0 once a ticket is quiet means no buffer leaked.</summary>
    public long InUse => Capacity - Available;

    /// <summary>Takes <paramref name="bytes"/> (clamped to the capacity); returns the amount taken,
    /// which the caller passes to <see cref="Release"/>.</summary>
    public ValueTask<long> AcquireAsync(long bytes, CancellationToken cancellationToken)
    {
        bytes = Math.Clamp(bytes, 0, Capacity);
        lock (_lock)
        {
            if (_waiters.Count == 0 && _available >= bytes)
            {
                _available -= bytes;
                return ValueTask.FromResult(bytes);
            }
            cancellationToken.ThrowIfCancellationRequested();
            var waiter = new Waiter(bytes);
            waiter.Node = _waiters.AddLast(waiter);
            if (cancellationToken.CanBeCanceled)
            {
                waiter.Registration = cancellationToken.Register(() => Cancel(waiter, cancellationToken));
            }
            return new ValueTask<long>(waiter.Completion.Task);
        }
    }

    public void Release(long bytes)
    {
        List<Waiter>? ready = null;
        lock (_lock)
        {
            _available += bytes;
            while (_waiters.First is { } first && first.Value.Bytes <= _available)
            {
                _available -= first.Value.Bytes;
                _waiters.RemoveFirst();
                first.Value.Node = null;
                (ready ??= []).Add(first.Value);
            }
        }
        if (ready is not null)
        {
            foreach (var waiter in ready)
            {
                waiter.Registration.Dispose();
                waiter.Completion.TrySetResult(waiter.Bytes);
            }
        }
    }

    private void Cancel(Waiter waiter, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (waiter.Node is null)
            {
                return; // already granted
            }
            _waiters.Remove(waiter.Node);
            waiter.Node = null;
        }
        waiter.Completion.TrySetCanceled(cancellationToken);
        // The head may have been blocking smaller waiters behind it.
        Release(0);
    }

    private sealed class Waiter(long bytes)
    {
        public long Bytes { get; } = bytes;
        public TaskCompletionSource<long> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public LinkedListNode<Waiter>? Node { get; set; }
        public CancellationTokenRegistration Registration { get; set; }
    }
}

/// <summary>Both limits a transfer obeys: its ticket's and the process-wide one.</summary>
public readonly record struct InFlightBudgets(ByteBudget Ticket, ByteBudget Global)
{
    public async ValueTask<(long TicketBytes, long GlobalBytes)> AcquireAsync(long bytes, CancellationToken cancellationToken)
    {
        var ticketBytes = await Ticket.AcquireAsync(bytes, cancellationToken);
        try
        {
            return (ticketBytes, await Global.AcquireAsync(bytes, cancellationToken));
        }
        catch
        {
            Ticket.Release(ticketBytes);
            throw;
        }
    }

    public void Release((long TicketBytes, long GlobalBytes) taken)
    {
        Global.Release(taken.GlobalBytes);
        Ticket.Release(taken.TicketBytes);
    }
}
