using NbdClient.Protocol;

namespace NbdClient;

/// <summary>Where in a connection's life a failure happened.</summary>
public enum NbdPhase
{
    /// <summary>Opening the socket.</summary>
    Connect,
    /// <summary>Option haggling before transmission.</summary>
    Handshake,
    /// <summary>The TLS handshake.</summary>
    Tls,
    /// <summary>Sending requests and receiving replies.</summary>
    Transmission,
    /// <summary>Closing the connection.</summary>
    Disconnect,
}

/// <summary>Why a connection failed.</summary>
public enum NbdConnectionFailure
{
    /// <summary>The socket could not be opened.</summary>
    ConnectFailed,
    /// <summary>The handshake did not finish in time (qemu-nbd --shared=1 blocks a second client silently).</summary>
    HandshakeTimeout,
    /// <summary>The server broke the protocol (bad magic, unknown cookie, bad lengths, ...).</summary>
    ProtocolError,
    /// <summary>The server closed the connection (EOF) without announcing a shutdown.</summary>
    ConnectionClosed,
    /// <summary>The server announced a shutdown (NBD_REP_ERR_SHUTDOWN or NBD_ESHUTDOWN).</summary>
    ServerShutdown,
    /// <summary>An I/O error on the socket.</summary>
    IOError,
    /// <summary>The TLS handshake or certificate validation failed.</summary>
    TlsFailed,
    /// <summary>The server only talks TLS and the client was not configured for it.</summary>
    TlsRequired,
    /// <summary>The client requires TLS and the server does not offer it.</summary>
    TlsUnavailable,
    /// <summary>The export does not exist.</summary>
    ExportNotFound,
    /// <summary>The server refused an option we need, or the export is unusable.</summary>
    Refused,
    /// <summary>A request got no reply within the request timeout; the connection was abandoned.</summary>
    RequestTimeout,
    /// <summary>The connection was closed by this client.</summary>
    Closed,
    /// <summary>Recent connection attempts all failed, so the pool does not try again until
    /// <see cref="NbdConnectionException.RetryAfter"/> has passed (circuit breaker open).</summary>
    CircuitOpen,
}

/// <summary>Base class of every error raised by NbdClient.</summary>
public class NbdException : IOException
{
    public NbdException(string message) : base(message) { }
    public NbdException(string message, Exception? inner) : base(message, inner) { }
}

/// <summary>The connection failed; every request pending on it failed with this (or with
/// <see cref="NbdOutcomeUnknownException"/> for writes that were already sent).</summary>
public sealed class NbdConnectionException : NbdException
{
    public NbdConnectionException(NbdConnectionFailure reason, NbdPhase phase, string message, Exception? inner = null)
        : base($"NBD connection failed during {phase.ToString().ToLowerInvariant()}: {message}", inner)
    {
        Reason = reason;
        Phase = phase;
    }

    public NbdConnectionFailure Reason { get; }
    public NbdPhase Phase { get; }

    /// <summary>For <see cref="NbdConnectionFailure.CircuitOpen"/>: when the pool will try to connect again.</summary>
    public TimeSpan? RetryAfter { get; init; }
}

/// <summary>The server answered a request with an error; the connection stays usable.</summary>
public sealed class NbdCommandException : NbdException
{
    public NbdCommandException(NbdCommand command, long offset, long length, NbdErrorCode error, string? serverMessage)
        : base(Format(command, offset, length, error, serverMessage))
    {
        Command = command;
        Offset = offset;
        Length = length;
        Error = error;
        ServerMessage = serverMessage;
    }

    public NbdCommand Command { get; }
    public long Offset { get; }
    public long Length { get; }
    /// <summary>The errno the server sent (unknown values are reported as EINVAL, as the spec says).</summary>
    public NbdErrorCode Error { get; }
    public string? ServerMessage { get; }

    private static string Format(NbdCommand command, long offset, long length, NbdErrorCode error, string? message)
    {
        var text = $"NBD {command} offset={offset} length={length} failed: {NbdErrors.Describe(error)}";
        return string.IsNullOrEmpty(message) ? text : $"{text} ({message})";
    }
}

/// <summary>A write-like request (WRITE, WRITE_ZEROES, TRIM) was sent but its reply was lost with the
/// connection: the data may or may not be on the server. Treat it as not written, and do not assume it
/// was not applied either (qemu-nbd was measured applying writes whose replies were lost).</summary>
public sealed class NbdOutcomeUnknownException : NbdException
{
    public NbdOutcomeUnknownException(NbdCommand command, long offset, long length, Exception inner)
        : base($"NBD {command} offset={offset} length={length}: outcome unknown, the connection was lost before the reply ({inner.Message})", inner)
    {
        Command = command;
        Offset = offset;
        Length = length;
    }

    public NbdCommand Command { get; }
    public long Offset { get; }
    public long Length { get; }
}

/// <summary>A request was refused locally because the export does not allow it (read-only, no flush, ...),
/// or because its arguments are out of range. Nothing was sent.</summary>
public sealed class NbdRequestRefusedException : NbdException
{
    public NbdRequestRefusedException(string message) : base(message) { }
}

internal static class NbdErrors
{
    public static NbdErrorCode FromWire(uint value) => value switch
    {
        1 or 5 or 12 or 22 or 28 or 75 or 95 or 108 => (NbdErrorCode)value,
        // "The client SHOULD treat an unexpected error value as if it had been NBD_EINVAL."
        _ => NbdErrorCode.EINVAL,
    };

    public static string Describe(NbdErrorCode error) => error switch
    {
        NbdErrorCode.EPERM => "EPERM (operation not permitted)",
        NbdErrorCode.EIO => "EIO (input/output error)",
        NbdErrorCode.ENOMEM => "ENOMEM (out of memory)",
        NbdErrorCode.EINVAL => "EINVAL (invalid argument)",
        NbdErrorCode.ENOSPC => "ENOSPC (no space left on device)",
        NbdErrorCode.EOVERFLOW => "EOVERFLOW (value too large)",
        NbdErrorCode.ENOTSUP => "ENOTSUP (operation not supported)",
        NbdErrorCode.ESHUTDOWN => "ESHUTDOWN (server is shutting down)",
        _ => $"error {(uint)error}",
    };
}
