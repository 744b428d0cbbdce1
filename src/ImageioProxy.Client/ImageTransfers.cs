using ImageioProxy.Checksums;
using NbdClient;

namespace ImageioProxy.Client;

/// <summary>The output format of a download.</summary>
public enum DownloadFormat
{
    Raw,
    Qcow2,
}

/// <summary>A summary of an image behind a ticket URL: what OPTIONS says and how its extents add up.</summary>
public sealed record ImageInfoReport(
    Uri Url,
    ImageioServerInfo Server,
    bool UsesUnixSocket,
    long Size,
    int Extents,
    long DataBytes,
    long ZeroBytes,
    long HoleBytes);

/// <summary>Upload, download, checksum and info: what imageio's client does, with every worker feeding one
/// <see cref="TransferProgress"/>.</summary>
public static class ImageTransfers
{
    // Extents of the local image are asked for in windows this big (imageio's block status step).
    private const long ExtentsWindow = 2L * 1024 * 1024 * 1024;

    /// <summary>Uploads the local image <paramref name="source"/> (any format qemu reads; probed unless
    /// <paramref name="format"/> is given) to <paramref name="url"/>: data as PUT ?flush=n, zeroes as PATCH zero
    /// (as PUT of zeroes on a server without "zero"; skipped when <paramref name="targetIsZero"/>), one flush at
    /// the end.</summary>
    public static async Task UploadAsync(string source, Uri url, ImageioClientOptions options, TransferProgress progress,
        string? format = null, bool targetIsZero = false, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(progress);
        progress.SetPhase("inspecting image");
        var info = await LocalImage.InspectAsync(source, format, cancellationToken).ConfigureAwait(false);

        progress.SetPhase("connecting to server");
        using var server = await ImageioHttpClient.ConnectAsync(url, options, cancellationToken).ConfigureAwait(false);
        if (!server.Server.AllowsWrite)
        {
            throw new ImageioClientException(ImageioErrorKind.Forbidden,
                $"the ticket of {url} does not allow writing (the server allows {string.Join(",", server.Server.AllowedMethods)}): it is a read-only (download) ticket");
        }
        var targetSize = await server.GetSizeAsync(cancellationToken).ConfigureAwait(false);
        if (targetSize < info.VirtualSize)
        {
            throw new ImageioClientException(ImageioErrorKind.ImageTooSmall,
                $"the target image is too small: {targetSize} bytes, the source {source} needs {info.VirtualSize} bytes");
        }
        if (!server.Server.CanFlush)
        {
            options.Warning?.Invoke("the server does not support flush; data may not be on stable storage when the upload ends");
        }
        var zeroMode = targetIsZero ? ZeroMode.Skip : server.Server.CanZero ? ZeroMode.Patch : ZeroMode.Put;

        var workers = Math.Min(options.MaxWorkers, server.Server.MaxWriters);
        await using var image = await LocalImage.OpenAsync(source, info.Format, readOnly: true, workers, cancellationToken).ConfigureAwait(false);
        progress.SetSize(image.Size);
        var extents = new List<ImageExtent>();
        for (long offset = 0; offset < image.Size; offset += ExtentsWindow)
        {
            extents.AddRange(await image.GetExtentsAsync(offset, Math.Min(ExtentsWindow, image.Size - offset), cancellationToken).ConfigureAwait(false));
        }
        var plan = TransferPlanner.Plan(extents, options.ChunkSize);

        progress.SetPhase("uploading image");
        var queue = new OperationQueue(plan);
        var zeroes = zeroMode == ZeroMode.Put ? new byte[Math.Min(options.ChunkSize, plan.Where(o => o.Kind == TransferOperationKind.Zero).Select(o => o.Length).DefaultIfEmpty(0).Max())] : [];
        await RunWorkersAsync(workers, ct => UploadWorkerAsync(image.Pool, server, queue, zeroMode, zeroes, options.ChunkSize, progress, ct), cancellationToken)
            .ConfigureAwait(false);

        if (server.Server.CanFlush)
        {
            progress.SetPhase("flushing");
            await server.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
        progress.SetPhase("upload completed");
    }

    /// <summary>Downloads <paramref name="url"/> to <paramref name="destination"/> as raw (sparse file with
    /// holes) or qcow2 (through a local qemu-nbd); zero extents are not transferred. The data goes to a
    /// temporary name in the same directory, renamed only when everything is written and flushed.</summary>
    public static async Task DownloadAsync(Uri url, string destination, DownloadFormat format, ImageioClientOptions options, TransferProgress progress,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(progress);
        destination = Path.GetFullPath(destination);
        var directory = Path.GetDirectoryName(destination)!;
        if (!Directory.Exists(directory))
        {
            throw new ImageioClientException(ImageioErrorKind.Local, $"directory {directory} does not exist");
        }

        progress.SetPhase("connecting to server");
        using var server = await ImageioHttpClient.ConnectAsync(url, options, cancellationToken).ConfigureAwait(false);
        IReadOnlyList<ImageExtent> extents = server.Server.CanExtents
            ? await server.GetExtentsAsync(cancellationToken).ConfigureAwait(false)
            : [new ImageExtent(0, await server.GetSizeAsync(cancellationToken).ConfigureAwait(false), Zero: false)];
        var size = extents.Count == 0 ? 0 : extents[^1].End;
        progress.SetSize(size);
        var plan = TransferPlanner.Plan(extents, options.ChunkSize);
        var workers = Math.Min(options.MaxWorkers, server.Server.MaxReaders);
        var queue = new OperationQueue(plan);

        // Hidden, unique, same directory (so the rename is atomic): never mistaken for a finished download.
        var temporary = Path.Combine(directory, $".{Path.GetFileName(destination)}.{Guid.NewGuid():N}.part");
        try
        {
            progress.SetPhase("downloading image");
            if (format == DownloadFormat.Raw)
            {
                using var file = File.OpenHandle(temporary, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, FileOptions.Asynchronous);
                RandomAccess.SetLength(file, size);
                await RunWorkersAsync(workers, ct => DownloadWorkerAsync(server, queue, options.ChunkSize, progress,
                    (offset, data, c) => RandomAccess.WriteAsync(file, data, offset, c), ct), cancellationToken).ConfigureAwait(false);
                progress.SetPhase("flushing");
                RandomAccess.FlushToDisk(file);
            }
            else
            {
                await LocalImage.CreateAsync(temporary, "qcow2", size, cancellationToken).ConfigureAwait(false);
                await using var image = await LocalImage.OpenAsync(temporary, "qcow2", readOnly: false, workers, cancellationToken).ConfigureAwait(false);
                await RunWorkersAsync(workers, ct => DownloadWorkerAsync(server, queue, options.ChunkSize, progress,
                    (offset, data, c) => image.Pool.WriteAsync(offset, data, cancellationToken: c), ct), cancellationToken).ConfigureAwait(false);
                progress.SetPhase("flushing");
                await image.Pool.FlushAsync(cancellationToken).ConfigureAwait(false);
            }
            File.Move(temporary, destination, overwrite: true);
        }
        catch
        {
            TryDelete(temporary);
            throw;
        }
        progress.SetPhase("download completed");
    }

    /// <summary>imageio's block checksum of a local image (read through qemu-nbd), equal to what the server's
    /// /checksum returns for the same content.</summary>
    public static async Task<ImageChecksum> ChecksumLocalAsync(string path, string? format, string algorithm, int blockSize, CancellationToken cancellationToken = default)
    {
        if (!BlockHash.IsSupported(algorithm))
        {
            throw new ArgumentException($"unsupported algorithm '{algorithm}'; use one of {string.Join(", ", BlockHash.Algorithms)}", nameof(algorithm));
        }
        var info = await LocalImage.InspectAsync(path, format, cancellationToken).ConfigureAwait(false);
        await using var image = await LocalImage.OpenAsync(path, info.Format, readOnly: true, BlockHash.DefaultReadsInFlight, cancellationToken).ConfigureAwait(false);
        var checksum = await BlockHash.ComputeAsync(new PoolChecksumSource(image.Pool), image.Size, algorithm, blockSize, cancellationToken).ConfigureAwait(false);
        return new ImageChecksum(algorithm, blockSize, checksum);
    }

    /// <summary>The server's /checksum of the image behind <paramref name="url"/>.</summary>
    public static async Task<ImageChecksum> ChecksumRemoteAsync(Uri url, ImageioClientOptions options, string algorithm, int blockSize, CancellationToken cancellationToken = default)
    {
        using var server = await ImageioHttpClient.ConnectAsync(url, options, cancellationToken).ConfigureAwait(false);
        if (!server.Server.CanChecksum)
        {
            throw new ImageioClientException(ImageioErrorKind.Server, $"the server of {url} does not support checksums");
        }
        return await server.GetChecksumAsync(algorithm, blockSize, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>OPTIONS and an extents summary.</summary>
    public static async Task<ImageInfoReport> InfoAsync(Uri url, ImageioClientOptions options, CancellationToken cancellationToken = default)
    {
        using var server = await ImageioHttpClient.ConnectAsync(url, options, cancellationToken).ConfigureAwait(false);
        IReadOnlyList<ImageExtent> extents = server.Server.CanExtents
            ? await server.GetExtentsAsync(cancellationToken).ConfigureAwait(false)
            : [new ImageExtent(0, await server.GetSizeAsync(cancellationToken).ConfigureAwait(false), Zero: false)];
        return new ImageInfoReport(url, server.Server, server.UsesUnixSocket,
            extents.Count == 0 ? 0 : extents[^1].End,
            extents.Count,
            extents.Where(e => !e.Zero).Sum(e => e.Length),
            extents.Where(e => e.Zero && !e.Hole).Sum(e => e.Length),
            extents.Where(e => e.Hole).Sum(e => e.Length));
    }

    private enum ZeroMode
    {
        /// <summary>PATCH zero.</summary>
        Patch,

        /// <summary>PUT of zero bytes: the server has no "zero" feature.</summary>
        Put,

        /// <summary>Nothing: the target is known to be zero.</summary>
        Skip,
    }

    /// <summary>Hands out the plan's operations in order to any number of workers.</summary>
    private sealed class OperationQueue(IReadOnlyList<TransferOperation> plan)
    {
        private int _next = -1;

        public bool TryTake(out TransferOperation operation)
        {
            var index = Interlocked.Increment(ref _next);
            if (index < plan.Count)
            {
                operation = plan[index];
                return true;
            }
            operation = default;
            return false;
        }
    }

    /// <summary>Reads the next data operation from the local image while the current one is being sent, so
    /// that the local read and the HTTP request overlap within one worker.</summary>
    private static async Task UploadWorkerAsync(NbdPool image, ImageioHttpClient server, OperationQueue queue, ZeroMode zeroMode, byte[] zeroes,
        int chunkSize, TransferProgress progress, CancellationToken cancellationToken)
    {
        byte[]? current = null;
        byte[]? spare = null;
        Task? pendingRead = null;
        try
        {
            if (!queue.TryTake(out var operation))
            {
                return;
            }
            pendingRead = StartRead(operation, ref current);
            while (true)
            {
                var hasNext = queue.TryTake(out var next);
                if (pendingRead is not null)
                {
                    await pendingRead.ConfigureAwait(false);
                    pendingRead = null;
                }
                var data = current;
                (current, spare) = (spare, current);
                Task? nextRead = hasNext ? StartRead(next, ref current) : null;
                pendingRead = nextRead;

                // Written zeroes are data to block status (raw files, preallocated images): a vectorised scan
                // of the chunk sends them as zero instead, as nbdcopy and qemu-img do (a server without "zero"
                // gets the bytes as they are).
                if (operation.Kind == TransferOperationKind.Data
                    && (zeroMode == ZeroMode.Put || data.AsSpan(0, (int)operation.Length).ContainsAnyExcept((byte)0)))
                {
                    await server.PutAsync(operation.Offset, data.AsMemory(0, (int)operation.Length), cancellationToken).ConfigureAwait(false);
                }
                else
                {
                    await ZeroAsync(server, operation, zeroMode, zeroes, cancellationToken).ConfigureAwait(false);
                }
                progress.Add(operation.Length);
                if (!hasNext)
                {
                    return;
                }
                operation = next;
            }
        }
        finally
        {
            // Never leave a read writing into a buffer after the worker is gone; its error is secondary.
            if (pendingRead is not null)
            {
                try
                {
                    await pendingRead.ConfigureAwait(false);
                }
                catch (Exception e) when (e is NbdException or OperationCanceledException)
                {
                }
            }
        }

        Task? StartRead(TransferOperation op, ref byte[]? buffer)
        {
            if (op.Kind != TransferOperationKind.Data)
            {
                return null;
            }
            buffer ??= GC.AllocateUninitializedArray<byte>(chunkSize);
            return image.ReadAsync(op.Offset, buffer.AsMemory(0, (int)op.Length), cancellationToken).AsTask();
        }
    }

    private static async Task ZeroAsync(ImageioHttpClient server, TransferOperation operation, ZeroMode zeroMode, byte[] zeroes, CancellationToken cancellationToken)
    {
        switch (zeroMode)
        {
            case ZeroMode.Patch:
                await server.ZeroAsync(operation.Offset, operation.Length, cancellationToken).ConfigureAwait(false);
                break;
            case ZeroMode.Put:
                for (var offset = operation.Offset; offset < operation.End; offset += zeroes.Length)
                {
                    var length = (int)Math.Min(zeroes.Length, operation.End - offset);
                    await server.PutAsync(offset, zeroes.AsMemory(0, length), cancellationToken).ConfigureAwait(false);
                }
                break;
            case ZeroMode.Skip:
                break;
        }
    }

    private static async Task DownloadWorkerAsync(ImageioHttpClient server, OperationQueue queue, int chunkSize, TransferProgress progress,
        Func<long, ReadOnlyMemory<byte>, CancellationToken, ValueTask> write, CancellationToken cancellationToken)
    {
        byte[]? buffer = null;
        while (queue.TryTake(out var operation))
        {
            // Zero extents stay holes: a new raw file and a new qcow2 image read as zeroes there.
            if (operation.Kind == TransferOperationKind.Data)
            {
                buffer ??= GC.AllocateUninitializedArray<byte>(chunkSize);
                var data = buffer.AsMemory(0, (int)operation.Length);
                await server.ReadAsync(operation.Offset, data, cancellationToken).ConfigureAwait(false);
                try
                {
                    await write(operation.Offset, data, cancellationToken).ConfigureAwait(false);
                }
                catch (IOException e)
                {
                    throw new ImageioClientException(ImageioErrorKind.Local, $"writing the local image at offset {operation.Offset} failed: {e.Message}", inner: e);
                }
            }
            progress.Add(operation.Length);
        }
    }

    /// <summary>Runs <paramref name="count"/> workers; the first failure cancels the others and is rethrown
    /// (not the cancellations it caused).</summary>
    private static async Task RunWorkersAsync(int count, Func<CancellationToken, Task> worker, CancellationToken cancellationToken)
    {
        using var failed = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        Exception? first = null;
        var tasks = Enumerable.Range(0, count).Select(async _ =>
        {
            try
            {
                await worker(failed.Token).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                if (e is not OperationCanceledException || cancellationToken.IsCancellationRequested)
                {
                    Interlocked.CompareExchange(ref first, e, null);
                }
                await failed.CancelAsync().ConfigureAwait(false);
            }
        }).ToArray();
        await Task.WhenAll(tasks).ConfigureAwait(false);
        cancellationToken.ThrowIfCancellationRequested();
        if (first is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    private sealed class PoolChecksumSource(NbdPool pool) : IChecksumSource
    {
        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct) => pool.ReadAsync(offset, buffer, ct);

        public ValueTask<IReadOnlyList<NbdExtent>> GetExtentsAsync(long offset, long length, CancellationToken ct) =>
            pool.Export.CanBlockStatus ? pool.GetExtentsAsync(offset, length, cancellationToken: ct) : ValueTask.FromResult<IReadOnlyList<NbdExtent>>([]);
    }
}
