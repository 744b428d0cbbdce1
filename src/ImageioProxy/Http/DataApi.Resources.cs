using System.Globalization;
using ImageioProxy.Checksums;
using ImageioProxy.Tickets;
using NbdClient;

namespace ImageioProxy.Http;

// /images/{ticket_id}/extents and /checksum[/algorithms] (imageio-api.md §3.5, §3.6).
public sealed partial class DataApi
{
    private static readonly string[] ExtentContexts = ["zero", "dirty"];
    private const string DefaultAlgorithm = "blake2b";
    private const int DefaultBlockSize = 4 * 1024 * 1024;
    private const int MinBlockSize = DefaultBlockSize / 4;
    private const int MaxBlockSize = DefaultBlockSize * 4;
    // NBD_CMD_BLOCK_STATUS lengths are 32 bits; imageio asks 2 GiB at a time too.
    private const long ExtentsStep = 2L * 1024 * 1024 * 1024;

    private async Task ExtentsAsync(DataRequest request, string ticketId)
    {
        RequireTicketId(ticketId);
        var http = request.Http;
        var (ticket, pool) = await OpenAsync(request, ticketId, TicketOp.Read);
        var context = JsonFields.Enum(QueryValue(http, "context"), "context", ExtentContexts, "zero");
        string? dirtyContext = null;
        if (context == "dirty")
        {
            dirtyContext = ticket.Spec.Dirty
                ? pool.Export.MetaContexts.Keys.FirstOrDefault(k => k.StartsWith(NbdMetaContexts.DirtyBitmapPrefix, StringComparison.Ordinal))
                : null;
            if (dirtyContext is null)
            {
                throw HttpErrorException.NotFound("Ticket does not support dirty extents");
            }
        }

        // start and length select part of the image (imageio issue #83); the default is all of it.
        var available = Math.Min(ticket.Spec.Size, pool.Export.Size);
        var start = QueryInteger(http, "start") ?? 0;
        var length = QueryInteger(http, "length") ?? Math.Max(0, available - start);
        if (start > available || length > available - start)
        {
            throw HttpErrorException.RangeNotSatisfiable("Requested range out of allowed range", available);
        }

        List<ZeroExtent> extents = [];
        await RunOperationAsync(request, ticket, start, async (_, ct) =>
        {
            var allocation = await ContextExtentsAsync(pool, NbdMetaContexts.BaseAllocation, start, length, ct);
            var second = await ContextExtentsAsync(pool, dirtyContext ?? NbdMetaContexts.AllocationDepth, start, length, ct);
            extents = Merge(start, length, allocation, second, dirty: dirtyContext is not null);
        });

        await WriteJsonAsync(http, StatusCodes.Status200OK, w =>
        {
            w.WriteStartArray();
            foreach (var e in extents)
            {
                w.WriteStartObject();
                w.WriteNumber("start", e.Start);
                w.WriteNumber("length", e.Length);
                if (dirtyContext is null)
                {
                    w.WriteBoolean("zero", e.Zero);
                    w.WriteBoolean("hole", e.Second);
                }
                else
                {
                    w.WriteBoolean("dirty", e.Second);
                    w.WriteBoolean("zero", e.Zero);
                }
                w.WriteEndObject();
            }
            w.WriteEndArray();
        });
    }

    /// <summary>Extents of one context, or null when the server did not negotiate it.</summary>
    private static async Task<List<NbdExtent>?> ContextExtentsAsync(NbdPool pool, string context, long start, long length, CancellationToken ct)
    {
        if (!pool.Export.MetaContexts.ContainsKey(context))
        {
            return null;
        }
        var all = new List<NbdExtent>();
        for (var at = start; at < start + length;)
        {
            var step = Math.Min(ExtentsStep, start + length - at);
            var part = await pool.GetExtentsAsync(at, step, context, ct);
            if (part.Count == 0)
            {
                throw new InvalidOperationException($"The NBD server returned no {context} extents at offset {at}");
            }
            foreach (var extent in part)
            {
                all.Add(extent);
                at = extent.End;
            }
        }
        return all;
    }

    /// <summary>Combines base:allocation (zero) with a second context: qemu:allocation-depth (hole =
    /// depth 0) or a dirty bitmap (dirty bit), and merges neighbours that look the same.</summary>
    internal static List<ZeroExtent> Merge(long start, long length, List<NbdExtent>? allocation, List<NbdExtent>? second, bool dirty)
    {
        var result = new List<ZeroExtent>();
        var end = start + length;
        int i = 0, j = 0;
        for (var at = start; at < end;)
        {
            while (allocation is not null && i < allocation.Count && allocation[i].End <= at)
            {
                i++;
            }
            while (second is not null && j < second.Count && second[j].End <= at)
            {
                j++;
            }
            var next = end;
            var zero = false;
            var flag = false;
            if (allocation is not null && i < allocation.Count)
            {
                next = Math.Min(next, allocation[i].End);
                zero = (allocation[i].Flags & NbdMetaContexts.StateZero) != 0;
            }
            if (second is not null && j < second.Count)
            {
                next = Math.Min(next, second[j].End);
                flag = dirty ? (second[j].Flags & NbdMetaContexts.StateDirty) != 0 : second[j].Flags == 0;
            }
            if (result.Count > 0 && result[^1] is var last && last.Zero == zero && last.Second == flag && last.Start + last.Length == at)
            {
                result[^1] = last with { Length = last.Length + (next - at) };
            }
            else
            {
                result.Add(new ZeroExtent(at, next - at, zero, flag));
            }
            at = next;
        }
        return result;
    }

    private async Task ChecksumAsync(DataRequest request, string ticketId)
    {
        RequireTicketId(ticketId);
        var http = request.Http;
        var algorithm = JsonFields.Enum(QueryValue(http, "algorithm"), "algorithm", BlockHash.Algorithms.ToArray(), DefaultAlgorithm);
        var blockSize = DefaultBlockSize;
        if (QueryValue(http, "block_size") is { } text
            && !int.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out blockSize))
        {
            throw HttpErrorException.BadRequest($"Invalid block size: {JsonFields.PyString(text)}");
        }
        if (blockSize is < MinBlockSize or > MaxBlockSize)
        {
            throw HttpErrorException.BadRequest($"Block size out of allowed range: {MinBlockSize}-{MaxBlockSize}");
        }
        if (blockSize % 4096 != 0)
        {
            throw HttpErrorException.BadRequest("Block size is not aligned to 4096");
        }

        var (ticket, pool) = await OpenAsync(request, ticketId, TicketOp.Read);
        var size = Math.Min(ticket.Spec.Size, pool.Export.Size);
        var checksum = "";
        await RunOperationAsync(request, ticket, 0, async (_, ct) =>
        {
            checksum = await BlockHash.ComputeAsync(new PoolChecksumSource(pool), size, algorithm, blockSize, ct);
        });
        await WriteJsonAsync(http, StatusCodes.Status200OK, w =>
        {
            w.WriteStartObject();
            w.WriteString("algorithm", algorithm);
            w.WriteNumber("block_size", blockSize);
            w.WriteString("checksum", checksum);
            w.WriteEndObject();
        });
    }

    private static Task AlgorithmsAsync(DataRequest request)
        => WriteJsonAsync(request.Http, StatusCodes.Status200OK, w =>
        {
            // Server information: no authorization (imageio-api.md §3.6).
            w.WriteStartObject();
            w.WriteStartArray("algorithms");
            foreach (var name in BlockHash.Algorithms.Order(StringComparer.Ordinal))
            {
                w.WriteStringValue(name);
            }
            w.WriteEndArray();
            w.WriteEndObject();
        });

    private static long? QueryInteger(HttpContext http, string name)
    {
        if (QueryValue(http, name) is not { } text)
        {
            return null;
        }
        if (!long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var value))
        {
            throw HttpErrorException.BadRequest($"Invalid value for '{name}': {JsonFields.PyString(text)}: expecting an integer >= 0");
        }
        return value;
    }

    private sealed class PoolChecksumSource(NbdPool pool) : IChecksumSource
    {
        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct) => pool.ReadAsync(offset, buffer, ct);

        public async ValueTask<IReadOnlyList<NbdExtent>> GetExtentsAsync(long offset, long length, CancellationToken ct)
            => (IReadOnlyList<NbdExtent>?)await ContextExtentsAsync(pool, NbdMetaContexts.BaseAllocation, offset, length, ct)
               ?? [new NbdExtent(offset, length, 0)];
    }
}

/// <summary>One extent of the reply: Second is "hole" in the zero context and "dirty" in the dirty one.</summary>
internal readonly record struct ZeroExtent(long Start, long Length, bool Zero, bool Second);
