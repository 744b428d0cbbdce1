using System.Buffers;
using NbdClient.Protocol;

namespace NbdClient.Internal;

/// <summary>One request on one connection, from queueing to its last reply chunk.</summary>
internal sealed class NbdRequest
{
    private readonly TaskCompletionSource _caller = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _settled;

    public NbdRequest(NbdCommand command, NbdCommandFlags flags, long offset, uint length)
    {
        Command = command;
        Flags = flags;
        Offset = offset;
        Length = length;
    }

    public NbdCommand Command { get; }
    public NbdCommandFlags Flags { get; }
    public long Offset { get; }
    public uint Length { get; }
    public long End => Offset + Length;
    public ulong Cookie { get; set; }

    /// <summary>The read or write this request is one part of, when it was cut into several requests; the
    /// caller waits for the group, not for each part.</summary>
    public RequestGroup? Group { get; init; }

    /// <summary>WRITE payload.</summary>
    public ReadOnlyMemory<byte> Payload { get; init; }

    /// <summary>WRITE payload held in a pipe instead (its first <see cref="Length"/> bytes).</summary>
    public SplicePipe? Source { get; init; }

    /// <summary>READ destination; written only while <see cref="TryBeginReceive"/> holds.</summary>
    public Memory<byte> Destination { get; init; }

    /// <summary>BLOCK_STATUS results by context id.</summary>
    public Dictionary<uint, List<NbdExtent>>? Extents { get; set; }

    /// <summary>Sequence number from the connection's <see cref="WriteTracker"/>, 0 for other commands.</summary>
    public long WriteSequence { get; set; }

    public long StartTimestamp { get; set; }

    /// <summary>Bytes of a READ covered by data and hole chunks.</summary>
    public long BytesSeen { get; set; }

    /// <summary>First error reported for this request (an error chunk does not end the reply).</summary>
    public Exception? Error { get; set; }

    public CancellationTokenRegistration Registration { get; set; }

    public Task Task => _caller.Task;

    /// <summary>Called once, on the thread that settles the request, when the server answered, the connection
    /// failed, or the request was dropped before it was sent — even if the caller stopped waiting earlier.
    /// Argument: the error, if any. It runs inline (the reader's thread, for a reply), before the caller is
    /// released, so it must be short and must not block: a task continuation here cost every write a
    /// thread-pool hop (docs/benchmarks.md, seventh round).</summary>
    public Action<Exception?>? OnSettled { get; init; }

    public void Settle(Exception? error)
    {
        if (Interlocked.Exchange(ref _settled, 1) == 0)
            OnSettled?.Invoke(error);
    }

    public bool IsWriteLike => Command is NbdCommand.Write or NbdCommand.WriteZeroes or NbdCommand.Trim;

    // The state decides who may touch the caller's memory: the writer while Sending, the reader while
    // Receiving. A cancelled caller is released only when neither does, so it can reuse its buffer.
    private RequestState _state;
    private bool _cancelRequested;
    private bool _detached;
    private bool _groupNotified;

    private enum RequestState
    {
        /// <summary>In the send queue.</summary>
        Queued,
        /// <summary>The writer is sending header and payload.</summary>
        Sending,
        /// <summary>On the wire, waiting for replies.</summary>
        Sent,
        /// <summary>The reader is copying reply data into <see cref="Destination"/>.</summary>
        Receiving,
        /// <summary>Answered, failed, or cancelled before it was sent.</summary>
        Finished,
    }

    /// <summary>True once the writer started sending: a write's outcome is then unknown if the connection dies.</summary>
    public bool WasSent
    {
        get
        {
            lock (_caller)
                return _everSent;
        }
    }

    private bool _everSent;
    private bool _finishPending;
    private Exception? _finishError;
    private bool _finishAnswered;

    // A zero-copy send (SpliceSender) leaves the payload's pages in the socket until the server has read
    // them, which only its reply proves. Until then the payload stays pinned and a cancelled caller waits.
    private MemoryHandle _lentPin;
    private Action<MemoryHandle>? _strand;
    private bool _lent;

    /// <summary>Writer: the payload is about to go to the kernel by reference; <paramref name="pin"/> is
    /// released when the server answers. If the connection dies first, the server may still read the pages
    /// from its socket: the pin goes to <paramref name="strand"/>, which releases it once the socket has
    /// given them up.</summary>
    public void LendPayload(MemoryHandle pin, Action<MemoryHandle> strand)
    {
        lock (_caller)
        {
            _lentPin = pin;
            _strand = strand;
            _lent = true;
        }
    }

    /// <summary>Writer: claim the request for sending. False when it was cancelled while queued.</summary>
    public bool TryBeginSend()
    {
        lock (_caller)
        {
            if (_state != RequestState.Queued)
                return false;
            // Parts of a pipe's payload take its bytes in turn: once one was skipped, a later one would
            // send the skipped bytes at its own offset. (Only cancellation skips a part, and the caller's
            // cancellation reaches every part: this one is released by its own callback.)
            if (Source is not null && Group is { IsBroken: true })
                return false;
            _state = RequestState.Sending;
            _everSent = true;
            return true;
        }
    }

    /// <summary>Writer: the payload is no longer needed.</summary>
    public void EndSend()
    {
        lock (_caller)
        {
            if (_state == RequestState.Sending)
                _state = RequestState.Sent;
            ReleaseIfCancelRequested();
        }
    }

    /// <summary>Reader: may reply data be copied into <see cref="Destination"/>? False when the caller left.</summary>
    public bool TryBeginReceive()
    {
        lock (_caller)
        {
            if (_detached || _state != RequestState.Sent)
                return false;
            _state = RequestState.Receiving;
            return true;
        }
    }

    public void EndReceive()
    {
        lock (_caller)
        {
            if (_state == RequestState.Receiving)
                _state = RequestState.Sent;
            ReleaseIfCancelRequested();
        }
    }

    private void ReleaseIfCancelRequested()
    {
        if (_finishPending)
        {
            _finishPending = false;
            _state = RequestState.Finished;
            ReturnLentPayload(_finishAnswered);
            CompleteCaller(_finishError);
            return;
        }
        if (_cancelRequested && !_detached && !_lent)
        {
            _detached = true;
            CallerCanceled(default);
        }
    }

    /// <summary>Caller cancelled. Returns true when the request was still queued: it will never be sent,
    /// and the connection must forget it.</summary>
    public bool Cancel(CancellationToken token)
    {
        lock (_caller)
        {
            switch (_state)
            {
                case RequestState.Queued:
                    _state = RequestState.Finished;
                    CallerCanceled(token);
                    return true;
                case RequestState.Sent when _lent:
                    _cancelRequested = true; // the kernel still holds the payload: released by Finish
                    return false;
                case RequestState.Sent:
                    _detached = true;
                    CallerCanceled(token);
                    return false;
                case RequestState.Sending:
                case RequestState.Receiving:
                    _cancelRequested = true;
                    return false;
                default:
                    return false;
            }
        }
    }

    /// <summary>Last reply chunk arrived (<paramref name="answered"/>), or the connection failed. If the
    /// writer or the reader is still using the caller's memory, the caller is released when they are done
    /// with it.</summary>
    public void Finish(Exception? error, bool answered)
    {
        Registration.Dispose();
        Settle(error);
        lock (_caller)
        {
            if (_state is RequestState.Sending or RequestState.Receiving)
            {
                _finishPending = true;
                _finishError = error;
                _finishAnswered = answered;
                return;
            }
            _state = RequestState.Finished;
            ReturnLentPayload(answered);
            if (_cancelRequested && !_detached)
            {
                // Cancelled while the kernel held the payload: released only now.
                _detached = true;
                CallerCanceled(default);
                return;
            }
            CompleteCaller(error);
        }
    }

    private void ReturnLentPayload(bool answered)
    {
        if (!_lent)
            return;
        _lent = false;
        if (answered)
            _lentPin.Dispose();
        else
            _strand!(_lentPin);
        _lentPin = default;
    }

    private void CompleteCaller(Exception? error)
    {
        if (_detached)
            return;
        _detached = true;
        if (error is null)
            _caller.TrySetResult();
        else
            _caller.TrySetException(error);
        NotifyGroup(error, canceled: false);
    }

    private void CallerCanceled(CancellationToken token)
    {
        _caller.TrySetCanceled(token);
        NotifyGroup(null, canceled: true);
    }

    // Under lock (_caller), like every completion of the caller: a part counts once, whichever path ends it.
    private void NotifyGroup(Exception? error, bool canceled)
    {
        if (Group is null || _groupNotified)
            return;
        _groupNotified = true;
        Group.PartDone(error, canceled);
    }
}

/// <summary>Several requests that together carry one read or write (<see cref="NbdConnection"/> cuts one larger
/// than the request limit into parts, sent back to back on one connection). The caller waits for
/// <see cref="Task"/>: it completes once every part is over, with the first part's error if any failed, or
/// cancelled. For a write, the pool's <c>settled</c> callback runs once, when every part has settled, with the first error.
/// Counting here instead of awaiting each part spares a thread-pool hop per part.</summary>
internal sealed class RequestGroup
{
    private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Action<Exception?>? _settled;
    private int _remaining;
    private int _unsettled;
    private Exception? _error;
    private Exception? _settledError;
    private int _canceled;
    private volatile bool _broken;

    public RequestGroup(int parts, Action<Exception?>? settled)
    {
        _remaining = _unsettled = parts;
        _settled = settled;
        PartSettled = OnPartSettled; // one delegate for every part
    }

    public Task Task => _done.Task;

    /// <summary>Each part's <see cref="NbdRequest.OnSettled"/>.</summary>
    public Action<Exception?> PartSettled { get; }

    /// <summary>A part was skipped (cancelled before it was sent): no later part may be sent.</summary>
    public bool IsBroken => _broken;

    public void Break() => _broken = true;

    public void PartDone(Exception? error, bool canceled)
    {
        if (error is not null)
            Interlocked.CompareExchange(ref _error, error, null);
        if (canceled)
            Volatile.Write(ref _canceled, 1);
        if (Interlocked.Decrement(ref _remaining) != 0)
            return;
        if (Volatile.Read(ref _error) is { } first)
            _done.TrySetException(first);
        else if (Volatile.Read(ref _canceled) != 0)
            _done.TrySetCanceled();
        else
            _done.TrySetResult();
    }

    private void OnPartSettled(Exception? error)
    {
        if (error is not null)
            Interlocked.CompareExchange(ref _settledError, error, null);
        if (Interlocked.Decrement(ref _unsettled) == 0)
            _settled?.Invoke(Volatile.Read(ref _settledError));
    }
}
