namespace ImageioProxy.Client;

/// <summary>How the client talks to an imageio server.</summary>
public sealed record ImageioClientOptions
{
    /// <summary>imageio's default number of parallel connections per transfer.</summary>
    public const int DefaultMaxWorkers = 4;

    /// <summary>Default request size: imageio's buffer size (8 MiB).</summary>
    public const int DefaultChunkSize = 8 * 1024 * 1024;

    /// <summary>Largest request size accepted: the largest zero step imageio's server uses.</summary>
    public const int MaxChunkSize = 128 * 1024 * 1024;

    /// <summary>PEM file with the CA certificate(s) that signed the server's certificate. Null: the system's
    /// trust store.</summary>
    public string? CaFile { get; init; }

    /// <summary>Skip TLS certificate verification. Only for testing.</summary>
    public bool Insecure { get; init; }

    /// <summary>Connections used in parallel; capped by the server's max_writers or max_readers.</summary>
    public int MaxWorkers { get; init; } = DefaultMaxWorkers;

    /// <summary>Bytes per PUT or GET request.</summary>
    public int ChunkSize { get; init; } = DefaultChunkSize;

    /// <summary>Switch to the server's unix socket when it runs on this host (as imageio's client does).</summary>
    public bool UseUnixSocket { get; init; } = true;

    /// <summary>Bound on one HTTP request, so that a hung server fails the transfer instead of hanging it.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>Warnings (for example a server without flush) go here; the command line prints them on stderr.</summary>
    public Action<string>? Warning { get; init; }

    internal void Validate()
    {
        if (MaxWorkers is < 1 or > 64)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxWorkers), MaxWorkers, "max workers must be between 1 and 64");
        }
        if (ChunkSize is < 4096 or > MaxChunkSize)
        {
            throw new ArgumentOutOfRangeException(nameof(ChunkSize), ChunkSize, $"chunk size must be between 4 KiB and {MaxChunkSize >> 20} MiB");
        }
    }
}
