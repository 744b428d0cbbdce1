namespace ImageioProxy.Configuration;

// Sections and keys mirror imageio's daemon.conf (imageio-api.md §7); every key can be given as
// --Section:Key=value on the command line, as Section__Key in the environment or in appsettings.json.
// docs/configuration.md documents each one.

/// <summary>[remote]: the TCP data service.</summary>
public sealed class RemoteOptions
{
    public const string Section = "Remote";

    /// <summary>Serve /images and /info over TCP.</summary>
    public bool Enable { get; set; } = true;

    /// <summary>"::" = every address, IPv4 and IPv6; "" = every IPv4 address; else an address or "localhost".</summary>
    public string Host { get; set; } = "::";

    /// <summary>0 picks a free port.</summary>
    public int Port { get; set; } = 54322;
}

/// <summary>[tls]: TLS of the remote service.</summary>
public sealed class TlsOptions
{
    public const string Section = "Tls";

    public bool Enable { get; set; } = true;

    /// <summary>PEM certificate (with or without the chain).</summary>
    public string CertFile { get; set; } = "";

    /// <summary>PEM private key.</summary>
    public string KeyFile { get; set; } = "";

    /// <summary>PEM CA certificates sent as the chain; empty = none.</summary>
    public string CaFile { get; set; } = "";
}

/// <summary>[local]: the same /images API on a unix socket, advertised as unix_socket in OPTIONS.</summary>
public sealed class LocalOptions
{
    public const string Section = "Local";

    public bool Enable { get; set; } = true;

    /// <summary>Socket path; a leading NUL (written "\u0000" in JSON) makes it an abstract Linux socket.</summary>
    public string Socket { get; set; } = "\0/org/ovirt/imageio";
}

/// <summary>[control]: the ticket API, unix socket only (mode 0660).</summary>
public sealed class ControlOptions
{
    public const string Section = "Control";

    public bool Enable { get; set; } = true;

    public string Socket { get; set; } = "/run/ovirt-imageio/sock";

    /// <summary>Seconds DELETE /tickets/{id} waits for ongoing operations before answering 409.</summary>
    public int RemoveTimeout { get; set; } = 60;
}

/// <summary>[daemon]: limits common to every ticket.</summary>
public sealed class DaemonOptions
{
    public const string Section = "Daemon";

    /// <summary>HTTP connections allowed per ticket; advertised as max_readers and max_writers.</summary>
    public int MaxConnections { get; set; } = 8;

    /// <summary>Seconds a connection may stay idle before it used a ticket, and the default
    /// inactivity_timeout of tickets.</summary>
    public int InactivityTimeout { get; set; } = 60;

    /// <summary>JSON ticket installed at start-up (imageio's -t option); empty = none.</summary>
    public string TicketFile { get; set; } = "";

    /// <summary>Seconds from SIGTERM to exit: new requests are refused at once, running ones get all but a
    /// flush reserve (min(5 s, a quarter)) to finish, then every ticket's pool is flushed and closed.
    /// Sets HostOptions.ShutdownTimeout too. The default fits Kubernetes' 30 s grace period
    /// (ecosystem.md §2.5); raise terminationGracePeriodSeconds before raising this.</summary>
    public double ShutdownTimeout { get; set; } = 25;
}

/// <summary>[backend_nbd]: the data path to qemu-nbd.</summary>
public sealed class BackendOptions
{
    public const string Section = "Backend";

    /// <summary>Bytes per chunk buffer of GET and PUT (at most 32 MiB, qemu-nbd's maximum request); a chunk
    /// goes to qemu-nbd as requests of at most <see cref="NbdRequestSize"/> (<see cref="SpliceRequestSize"/>
    /// when it was spliced).</summary>
    public int ChunkSize { get; set; } = 1024 * 1024;

    /// <summary>The largest NBD READ/WRITE sent: a chunk is cut into requests of at most this size (0, the
    /// default: one request per chunk). For a qemu-nbd started without GLIBC_TUNABLES, whose glibc maps every
    /// request buffer over ~124 KiB afresh; docs/operations.md, "qemu-nbd's allocator".</summary>
    public int NbdRequestSize { get; set; }

    /// <summary>The largest NBD WRITE of a spliced PUT: each chunk taken from the client's socket goes to qemu-nbd
    /// as requests of at most this size, back to back on one connection (0: as <see cref="NbdRequestSize"/>).
    /// qemu-nbd allocates a buffer per request; glibc gives larger ones back to the kernel when freed (with the
    /// mmap threshold fixed, as the GLIBC_TUNABLES does) or maps each afresh (without tunables), and
    /// qemu-nbd then faults every page in again: 120 KiB stays clear of both (docs/benchmarks.md, seventh round).</summary>
    public int SpliceRequestSize { get; set; } = 120 * 1024;

    /// <summary>Bytes of NBD reads and writes in flight for one ticket, over all its requests. 32 MiB is
    /// twice what nbdcopy keeps in flight per connection (64 × 256 KiB) and kept qemu-nbd busy in
    /// docs/benchmarks.md.</summary>
    public long MaxInFlightBytesPerTicket { get; set; } = 32L * 1024 * 1024;

    /// <summary>Bytes of NBD reads and writes in flight for the whole process. Chunk buffers are
    /// pooled up to this much, so it is most of the proxy's RSS (peak RSS ≤ 150 MiB with 8 uploads).</summary>
    public long MaxInFlightBytes { get; set; } = 64L * 1024 * 1024;

    /// <summary>Reads in flight per GET.</summary>
    public int ReadAhead { get; set; } = 8;

    /// <summary>Bytes per NBD WRITE_ZEROES issued by PATCH zero (below 4 GiB, the protocol's limit).</summary>
    public long ZeroStep { get; set; } = 1024L * 1024 * 1024;

    /// <summary>SO_SNDBUF/SO_RCVBUF of each NBD socket (0: the system's). The kernel caps it at
    /// net.core.wmem_max/rmem_max; docs/benchmarks.md has what it gained.</summary>
    public int SocketBufferSize { get; set; } = 4 * 1024 * 1024;

    /// <summary>Send PUT data to qemu-nbd without copying it into the socket (Linux vmsplice + splice, plain
    /// sockets only): NbdClientOptions.ZeroCopyWrites. Safe here because a chunk buffer is reused only after
    /// its write was acknowledged.</summary>
    public bool ZeroCopyWrites { get; set; } = true;

    /// <summary>NBD connections per ticket when the export allows multi-conn; 0 (the default) picks one per
    /// core, at most 4.</summary>
    public int NbdConnections { get; set; }

    /// <summary><see cref="NbdConnections"/>, or when 0 what nbdcopy does: one connection per core, at most 4.
    /// More connections than cores only add context switches (docs/benchmarks.md).</summary>
    public int EffectiveNbdConnections => NbdConnections > 0 ? NbdConnections : Math.Clamp(Environment.ProcessorCount, 1, 4);

    // Failure handling (docs/reliability.md). Times are in seconds and may be fractional.

    /// <summary>An NBD request without a reply for this long abandons its connection: the HTTP request fails
    /// with 504 instead of hanging on a hung server. Must exceed the slowest legitimate request (a flush
    /// of a large write-back cache on slow storage).</summary>
    public double RequestTimeout { get; set; } = 60;

    /// <summary>Bound on opening a socket to the NBD server, and separately on its handshake.</summary>
    public double ConnectTimeout { get; set; } = 10;

    /// <summary>Attempts to open a replacement for a dead NBD connection before the request fails; the
    /// delays between them grow exponentially from ReconnectDelay to ReconnectMaxDelay, with jitter.</summary>
    public int ReconnectAttempts { get; set; } = 3;

    public double ReconnectDelay { get; set; } = 0.1;

    public double ReconnectMaxDelay { get; set; } = 2;

    /// <summary>Circuit breaker per ticket: after this many failed connection attempts in a row, requests
    /// needing a connection fail at once with 503 for BreakerBreakDuration, then one attempt probes the
    /// server. 0 disables it.</summary>
    public int BreakerFailureThreshold { get; set; } = 3;

    public double BreakerBreakDuration { get; set; } = 5;

    public double BreakerSamplingDuration { get; set; } = 30;
}

/// <summary>[limits]: Kestrel's protections against slow, idle and oversized clients on the data
/// listeners (ecosystem.md §1.6). imageio has none of these but a 60 s socket timeout, so the defaults
/// are lenient enough for big uploads over slow or stalling links; docs/reliability.md lists them.</summary>
public sealed class LimitsOptions
{
    public const string Section = "Limits";

    /// <summary>Bytes/s a request body must average once the grace period is over; 0 disables the check.
    /// Time the proxy spends not reading (back-pressure from a slow backend) does not count.</summary>
    public int MinRequestBodyDataRate { get; set; } = 240;

    /// <summary>Seconds before MinRequestBodyDataRate applies: imageio's 60 s socket timeout.</summary>
    public int MinRequestBodyDataRateGracePeriod { get; set; } = 60;

    /// <summary>Bytes/s a client must average reading a response (GET); 0 disables the check.</summary>
    public int MinResponseDataRate { get; set; } = 240;

    /// <summary>Seconds before MinResponseDataRate applies.</summary>
    public int MinResponseDataRateGracePeriod { get; set; } = 60;

    /// <summary>Seconds a client may take to send the request line and headers once it started (slowloris).</summary>
    public int RequestHeadersTimeout { get; set; } = 30;

    /// <summary>Bytes of the request line; longer gets 414 (imageio: 4096).</summary>
    public int MaxRequestLineSize { get; set; } = 8192;

    /// <summary>Bytes of all request headers together; more gets 431.</summary>
    public int MaxRequestHeadersTotalSize { get; set; } = 32 * 1024;

    /// <summary>Number of request headers; more gets 431.</summary>
    public int MaxRequestHeaderCount { get; set; } = 100;

    /// <summary>Open data connections (TCP and local socket together); 0 = unlimited. Connections per
    /// ticket are limited by Daemon:MaxConnections.</summary>
    public long MaxConcurrentConnections { get; set; }
}

/// <summary>Kestrel tuning of the data listeners (docs/benchmarks.md says what each one gained).</summary>
public sealed class HttpOptions
{
    public const string Section = "Http";

    /// <summary>Bytes per block of Kestrel's memory pool, which is the most one socket receive can
    /// return. Kestrel's own pool has 4 KiB blocks and receives about 2 KiB at a time; 0 keeps it.</summary>
    public int PoolBlockSize { get; set; } = 64 * 1024;

    /// <summary>Kestrel's MaxRequestBufferSize: request bytes buffered before Kestrel stops reading
    /// the socket (back-pressure).</summary>
    public long MaxRequestBufferSize { get; set; } = 1024 * 1024;

    /// <summary>Kestrel's SocketTransportOptions.UnsafePreferInlineScheduling: run request code on the
    /// socket's I/O thread instead of handing every receive to the thread pool. Pays off together with
    /// the runtime's inline socket completions (DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1, which the
    /// proxy sets for itself unless the environment says otherwise); docs/benchmarks.md.</summary>
    public bool InlineScheduling { get; set; } = true;

    /// <summary>Kestrel's SocketTransportOptions.WaitForDataBeforeAllocatingBuffer: park an idle
    /// connection in a zero-byte receive and take a pool block only when data arrives. Off by default:
    /// without the extra receive per wake-up, bulk PUTs measured 1.04-1.24x faster with 0.67-0.92x the
    /// CPU (docs/benchmarks.md); the price is one pool block (Http:PoolBlockSize) held by every open
    /// connection.</summary>
    public bool WaitForDataBeforeAllocatingBuffer { get; set; }

    /// <summary>PUT bodies on the plain-HTTP listener go from the client's socket to qemu-nbd by splice(2),
    /// never copied by the proxy (Linux; bodies of at least MaxRequestBufferSize plus two chunks;
    /// docs/benchmarks.md, fifth round). TLS listeners always copy.</summary>
    public bool SpliceUploads { get; set; } = true;

    /// <summary>The same on the local unix-socket listener. Off by default: there splicing measured 1.16×
    /// slower than copying, at 0.9× the CPU (unix sockets wake the reader for every write of the client;
    /// docs/benchmarks.md, sixth round).</summary>
    public bool SpliceLocalUploads { get; set; }
}
