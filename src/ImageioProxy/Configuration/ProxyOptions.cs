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
}

/// <summary>[backend_nbd]: the data path to qemu-nbd.</summary>
public sealed class BackendOptions
{
    public const string Section = "Backend";

    /// <summary>Bytes per NBD READ/WRITE issued by GET and PUT (at most 32 MiB, qemu-nbd's maximum).</summary>
    public int ChunkSize { get; set; } = 1024 * 1024;

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

    /// <summary>NBD connections per ticket when the export allows multi-conn.</summary>
    public int NbdConnections { get; set; } = 4;
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
}
