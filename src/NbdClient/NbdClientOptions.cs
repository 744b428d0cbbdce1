using Microsoft.Extensions.Logging;

namespace NbdClient;

/// <summary>Settings of one NBD connection.</summary>
public sealed record NbdClientOptions
{
    /// <summary>Requests in flight per connection (libnbd suggests 64).</summary>
    public int MaxInFlight { get; init; } = 64;

    /// <summary>Time allowed to open the socket.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Time allowed for the whole handshake. qemu-nbd --shared=1 accepts a second client's
    /// socket and then blocks its handshake until the first leaves, so this must be bounded.</summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>A request without a reply for this long fails the connection (the protocol has no
    /// cancel, so a hung server can only be abandoned). <see cref="Timeout.InfiniteTimeSpan"/> disables it.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(120);

    /// <summary>Negotiate structured replies (needed for block status and sparse reads).</summary>
    public bool StructuredReplies { get; init; } = true;

    /// <summary>Metadata contexts to select (SET_META_CONTEXT). Unknown ones are silently dropped by servers.</summary>
    public IReadOnlyList<string> MetaContexts { get; init; } = [NbdMetaContexts.BaseAllocation];

    /// <summary>TLS settings; used when the endpoint requires TLS (nbds://). Null uses the system trust store.</summary>
    public NbdTlsOptions? Tls { get; init; }

    /// <summary>Cap on READ/WRITE payloads; the effective value is min(this, server maximum, 32 MiB).</summary>
    public int MaxPayload { get; init; } = 32 * 1024 * 1024;

    /// <summary>SO_SNDBUF and SO_RCVBUF of the socket, or 0 for the system's defaults. Larger buffers let
    /// one big WRITE (or READ reply) cross the socket with fewer wake-ups of either side; the kernel caps
    /// the value at net.core.wmem_max / rmem_max (212992 on a stock system).</summary>
    public int SocketBufferSize { get; init; }

    /// <summary>On Linux, send WRITE payloads of 64 KiB and more without copying them into the socket
    /// (vmsplice + splice; not over TLS). The server then reads them from the caller's memory, so a write's
    /// buffer stays in use until its reply: a cancelled write completes only then, and if the connection
    /// fails first the buffer stays pinned until the socket holds none of it (the server read it or left),
    /// and must not be modified or reused, because the server may still read it and apply the write late.
    /// Off by default for that contract; ImageioProxy turns it on (Backend:ZeroCopyWrites), as it never
    /// reuses the buffer of a failed write.</summary>
    public bool ZeroCopyWrites { get; init; }

    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    public ILoggerFactory? LoggerFactory { get; init; }
}

/// <summary>X.509 TLS settings. The server certificate is always verified.</summary>
public sealed record NbdTlsOptions
{
    /// <summary>PEM file with the CA certificate(s) to trust; null = system trust store.</summary>
    public string? CaFile { get; init; }

    /// <summary>Optional client certificate (PEM), e.g. for qemu-nbd's default verify-peer=on.</summary>
    public string? ClientCertificateFile { get; init; }

    /// <summary>Key of the client certificate (PEM).</summary>
    public string? ClientKeyFile { get; init; }

    /// <summary>Name to verify in the server certificate; defaults to the URI host, or "localhost" for unix sockets.</summary>
    public string? Hostname { get; init; }
}

/// <summary>Settings of a pool of connections to one export.</summary>
public sealed record NbdPoolOptions
{
    public NbdClientOptions Connection { get; init; } = new();

    /// <summary>Connections to open when the export advertises CAN_MULTI_CONN (otherwise 1).</summary>
    public int MaxConnections { get; init; } = 4;

    /// <summary>Reads and writes longer than this are split into requests of at most this many bytes, sent back
    /// to back on one connection (so that a pipe's payload can be cut too; the caller waits for the group, not
    /// for each part). 0: only the export's maximum payload splits them. qemu-nbd allocates a
    /// buffer per request, and with glibc's allocator large ones can cost it a page fault per page
    /// (docs/benchmarks.md, fourth and seventh rounds).</summary>
    public int MaxRequestSize { get; init; }

    /// <summary>Writes from a pipe (<see cref="NbdPool.WriteAsync(long, SplicePipe, NbdCommandFlags, CancellationToken)"/>)
    /// longer than this go as requests of at most this many bytes, back to back on one connection. 0: as
    /// <see cref="MaxRequestSize"/>.</summary>
    public int MaxPipeRequestSize { get; init; }

    /// <summary>How many times to try opening a replacement connection before failing a request.</summary>
    public int ReconnectAttempts { get; init; } = 3;

    /// <summary>First back-off delay between reconnect attempts (exponential, with jitter).</summary>
    public TimeSpan ReconnectDelay { get; init; } = TimeSpan.FromMilliseconds(100);

    /// <summary>Cap on the back-off delay between reconnect attempts.</summary>
    public TimeSpan ReconnectMaxDelay { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Circuit breaker on reconnects: after this many failed connection attempts in a row (within
    /// <see cref="BreakerSamplingDuration"/>), requests that need a new connection fail at once with
    /// <see cref="NbdConnectionFailure.CircuitOpen"/> for <see cref="BreakerBreakDuration"/>; then one attempt
    /// probes the server again. 0 disables the breaker; otherwise at least 2 (Polly's minimum throughput).</summary>
    public int BreakerFailureThreshold { get; init; } = 3;

    /// <summary>Window in which the failed attempts are counted (at least 0.5 s).</summary>
    public TimeSpan BreakerSamplingDuration { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>How long an open circuit fails requests before probing again (at least 0.5 s).</summary>
    public TimeSpan BreakerBreakDuration { get; init; } = TimeSpan.FromSeconds(5);
}
