using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using NbdClient;

namespace ImageioProxy.Hosting;

/// <summary>Lets a request take the rest of its body straight from the connection's socket
/// (<see cref="DataPath.SplicedUpload"/>). Kestrel's HTTP/1.1 parser still expects those bytes in its
/// input, so <see cref="Skip"/> tells it they were read: its reader then returns that many placeholder
/// bytes, which Kestrel's body reader counts off and nobody reads.</summary>
public interface IBodySpliceFeature
{
    /// <summary>The client's socket. Only a request that has made Kestrel's receive loop wait (its input
    /// pipe holds a whole pause threshold that the request has not examined) may read from it.</summary>
    Socket Socket { get; }

    /// <summary>The next <paramref name="count"/> bytes Kestrel reads are placeholders for bytes the
    /// request took from the socket itself.</summary>
    void Skip(long count);
}

/// <summary>The connection middleware behind <see cref="IBodySpliceFeature"/>, for plain-HTTP and
/// unix-socket listeners (never TLS: there the socket carries records, not the body).</summary>
public static class BodySplicing
{
    public static ConnectionDelegate Middleware(ConnectionDelegate next) => connection =>
    {
        var socket = connection.Features.Get<IConnectionSocketFeature>()?.Socket;
        if (socket is not null && SplicePipe.IsSupported)
        {
            var input = new SkippingPipeReader(connection.Transport.Input);
            connection.Transport = new DuplexPipe(input, connection.Transport.Output);
            connection.Features.Set<IBodySpliceFeature>(new Feature(socket, input));
        }
        return next(connection);
    };

    private sealed class Feature(Socket socket, SkippingPipeReader input) : IBodySpliceFeature
    {
        public Socket Socket { get; } = socket;

        public void Skip(long count) => input.Skip(count);
    }

    private sealed class DuplexPipe(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input { get; } = input;

        public PipeWriter Output { get; } = output;
    }
}

/// <summary>Passes reads through, except that it first returns bytes to skip as placeholders (zeros
/// from one shared array, never written or read). Reads are not concurrent (a PipeReader contract), and
/// <see cref="Skip"/> is called by the request between its reads.</summary>
internal sealed class SkippingPipeReader(PipeReader inner) : PipeReader
{
    private static readonly byte[] Placeholder = new byte[1024 * 1024];

    private long _skip;
    private ReadOnlySequence<byte> _returned; // the placeholder sequence last returned, if the last read returned one
    private bool _returnedPlaceholder;

    public void Skip(long count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        _skip += count;
    }

    public override bool TryRead(out ReadResult result)
    {
        if (_skip > 0)
        {
            result = Placeholders();
            return true;
        }
        _returnedPlaceholder = false;
        return inner.TryRead(out result);
    }

    public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
    {
        if (_skip > 0)
        {
            return new ValueTask<ReadResult>(Placeholders());
        }
        _returnedPlaceholder = false;
        return inner.ReadAsync(cancellationToken);
    }

    public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

    public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
    {
        if (_returnedPlaceholder)
        {
            _skip -= _returned.Slice(_returned.Start, consumed).Length;
            _returnedPlaceholder = false;
            return;
        }
        inner.AdvanceTo(consumed, examined);
    }

    public override void CancelPendingRead() => inner.CancelPendingRead();

    public override void Complete(Exception? exception = null) => inner.Complete(exception);

    private ReadResult Placeholders()
    {
        _returned = new ReadOnlySequence<byte>(Placeholder, 0, (int)Math.Min(_skip, Placeholder.Length));
        _returnedPlaceholder = true;
        return new ReadResult(_returned, isCanceled: false, isCompleted: false);
    }
}
