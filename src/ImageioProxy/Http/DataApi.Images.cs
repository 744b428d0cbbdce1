using System.Text.Json;
using ImageioProxy.DataPath;
using ImageioProxy.Hosting;
using ImageioProxy.Observability;
using ImageioProxy.Tickets;
using Microsoft.AspNetCore.Http.Features;

namespace ImageioProxy.Http;

// /images/{ticket_id}: OPTIONS, GET/HEAD, PUT, PATCH (imageio-api.md §3.1-§3.4).
public sealed partial class DataApi
{
    private static readonly string[] AllFeatures = ["checksum", "extents", "flush", "zero"];
    private static readonly string[] ReadFeatures = ["checksum", "extents"];
    private static readonly string[] FlushValues = ["y", "n"];
    private static readonly string[] PatchOps = ["zero", "flush"];
    private const int MaxPatchBody = 64 * 1024;

    private async Task OptionsAsync(DataRequest request, string ticketId)
    {
        RequireTicketId(ticketId);
        var http = request.Http;
        Cors.Allow(http, "OPTIONS,GET,PUT");
        string allow;
        string[] features;
        Ticket? ticket = null;
        if (ticketId == "*")
        {
            // Capabilities of the server, no ticket needed (imageio-api.md §3.1).
            allow = "OPTIONS,GET,PUT,PATCH";
            features = AllFeatures;
        }
        else
        {
            (ticket, _) = await OpenAsync(request, ticketId, TicketOp.Read);
            ticket.Touch();
            allow = ticket.Spec.MayWrite ? "OPTIONS,GET,PUT,PATCH" : "OPTIONS,GET";
            features = ticket.Spec.MayWrite ? AllFeatures : ReadFeatures;
            LogOptions(ticket.Spec.TransferId);
        }
        http.Response.Headers.Allow = allow;
        await WriteJsonAsync(http, StatusCodes.Status200OK, w =>
        {
            w.WriteStartObject();
            if (_local.Enable)
            {
                w.WriteString("unix_socket", _local.Socket);
            }
            w.WriteStartArray("features");
            foreach (var feature in features)
            {
                w.WriteStringValue(feature);
            }
            w.WriteEndArray();
            if (ticket is not null)
            {
                // The limit is enforced per ticket, so this is the truth. Clients read a missing value as 1.
                w.WriteNumber("max_readers", _daemon.MaxConnections);
                w.WriteNumber("max_writers", _daemon.MaxConnections);
            }
            w.WriteEndObject();
        });
    }

    private async Task GetAsync(DataRequest request, string ticketId)
    {
        RequireTicketId(ticketId);
        var http = request.Http;
        Cors.Allow(http, "*");
        RangeRequest? range = null;
        var rangeHeader = http.Request.Headers.Range.ToString();
        if (rangeHeader.Length > 0)
        {
            if (!HttpRanges.TryParseRange(rangeHeader, out var parsed, out var rangeError))
            {
                throw new HttpErrorException(StatusCodes.Status416RangeNotSatisfiable, rangeError);
            }
            range = parsed;
        }

        var (ticket, pool) = await OpenAsync(request, ticketId, TicketOp.Read);
        var ticketSize = ticket.Spec.Size;
        var available = Math.Min(ticketSize, pool.Export.Size);
        long offset = 0;
        var size = available;
        if (range is { } r)
        {
            if (r.SuffixLength is long suffix)
            {
                // An improvement over imageio: the last N bytes (RFC 9110 §14.1.1).
                if (suffix == 0 || available == 0)
                {
                    throw HttpErrorException.RangeNotSatisfiable("Cannot satisfy an empty suffix range", available);
                }
                size = Math.Min(suffix, available);
                offset = available - size;
            }
            else
            {
                offset = r.First ?? 0;
                if (r.Last is long last)
                {
                    // Compared without overflow: last may be long.MaxValue.
                    if (offset >= ticketSize || last >= ticketSize)
                    {
                        throw HttpErrorException.OutOfAllowedRange(ticketSize);
                    }
                    if (last >= available)
                    {
                        throw HttpErrorException.RangeNotSatisfiable($"Requested more bytes than available: {last + 1} > {available}", available);
                    }
                    size = last - offset + 1;
                }
                else
                {
                    if (offset >= available)
                    {
                        throw HttpErrorException.RangeNotSatisfiable("Requested range out of allowed range", available);
                    }
                    size = available - offset;
                }
            }
        }

        var response = http.Response;
        response.ContentLength = size;
        response.ContentType = "application/octet-stream";
        response.Headers.ContentDisposition = ticket.Spec.Filename is null ? "attachment" : $"attachment; filename={ticket.Spec.Filename}";
        if (range is not null)
        {
            // imageio puts the ticket size after the slash (imageio-api.md §3.2).
            response.StatusCode = StatusCodes.Status206PartialContent;
            response.Headers.ContentRange = $"bytes {offset}-{offset + size - 1}/{ticketSize}";
        }
        if (HttpMethods.IsHead(http.Request.Method))
        {
            ticket.Touch();
            return;
        }
        LogRead(ticket.Spec.TransferId, offset, size);
        await RunOperationAsync(request, ticket, offset, DataOperationKind.Read, (operation, ct) =>
            Transfers.DownloadAsync(response.Body, pool, offset, size, _tickets.ChunkBuffers, _backend.ReadAhead, Budgets(ticket), operation, ct));
    }

    private async Task PutAsync(DataRequest request, string ticketId)
    {
        RequireTicketId(ticketId);
        var http = request.Http;
        Cors.Allow(http, "*");
        var length = http.Request.ContentLength;
        var chunked = length is null && http.Features.Get<IHttpRequestBodyDetectionFeature>()?.CanHaveBody == true;
        if (length is null && !chunked)
        {
            throw HttpErrorException.BadRequest("Content-Length header is required");
        }
        long offset = 0;
        // Presence, not length: an empty Content-Range is invalid (imageio answers 400), and ignoring
        // it would write the body at offset 0.
        if (http.Request.Headers.TryGetValue("Content-Range", out var contentRangeValues))
        {
            var contentRange = contentRangeValues.ToString();
            if (!HttpRanges.TryParseContentRange(contentRange, out var parsed, out var error))
            {
                throw HttpErrorException.BadRequest(error);
            }
            // Only the first byte is used; the length comes from Content-Length (imageio-api.md §3.3).
            offset = parsed.First;
        }
        var flush = JsonFields.Enum(QueryValue(http, "flush"), "flush", FlushValues, "y") == "y";

        var ticket = _tickets.Authorize(ticketId, TicketOp.Write);
        var ticketSize = ticket.Spec.Size;
        if (offset > ticketSize || (length is long n && n > ticketSize - offset))
        {
            throw HttpErrorException.OutOfAllowedRange(ticketSize);
        }
        var (_, pool) = await OpenAsync(request, ticketId, TicketOp.Write);
        var limit = Math.Min(ticketSize, pool.Export.Size);
        if (offset > limit || (length is long m && m > limit - offset))
        {
            // imageio would fail in the middle with a 500; refuse before writing anything.
            throw HttpErrorException.RangeNotSatisfiable($"Requested more bytes than available: {offset + (length ?? 0)} > {limit}", limit);
        }

        LogWrite(ticket.Spec.TransferId, offset, length ?? -1, flush);
        await RunOperationAsync(request, ticket, offset, DataOperationKind.Write, async (operation, ct) =>
        {
            try
            {
                if (length is long size && SplicedUpload.IsWorthIt(size, _http.MaxRequestBufferSize, _tickets.ChunkBuffers.BufferSize)
                    && http.Features.Get<IBodySpliceFeature>() is { } splice)
                {
                    await SplicedUpload.UploadAsync(http.Request.BodyReader, splice, _http.MaxRequestBufferSize,
                        http.Features.Get<Microsoft.AspNetCore.Server.Kestrel.Core.Features.IHttpMinRequestBodyDataRateFeature>()?.MinDataRate, _time, pool, offset, size,
                        _tickets.ChunkBuffers, _tickets.SplicePipes, Budgets(ticket), operation, _metrics.RecordSpliced, ct);
                }
                else
                {
                    await Transfers.UploadAsync(http.Request.BodyReader, pool, offset, length, limit, _tickets.ChunkBuffers, Budgets(ticket), operation, ct);
                }
            }
            catch (PartialContentException e)
            {
                throw new HttpErrorException(StatusCodes.Status400BadRequest, e.Message, closeConnection: true);
            }
            catch (InvalidBodyException e)
            {
                throw new HttpErrorException(e.Status, $"Invalid request body: {e.Message}", closeConnection: true);
            }
            catch (BodyTooLongException)
            {
                throw new HttpErrorException(StatusCodes.Status416RangeNotSatisfiable, "Requested range out of allowed range",
                    closeConnection: true, contentRange: $"bytes */{ticketSize}");
            }
            http.Items[BodyReadKey] = true;
            if (flush)
            {
                await FlushAsync(request, pool, ct);
            }
        });
    }

    private async Task PatchAsync(DataRequest request, string ticketId)
    {
        RequireTicketId(ticketId);
        var http = request.Http;
        var message = await ReadJsonBodyAsync(http, "Invalid JSON message");
        if (message.ValueKind != JsonValueKind.Object)
        {
            throw HttpErrorException.BadRequest("Invalid JSON message: expecting an object");
        }
        var opName = message.TryGetProperty("op", out var opValue)
            ? opValue.ValueKind == JsonValueKind.String ? opValue.GetString()! : JsonFields.Repr(opValue)
            : null;
        var op = JsonFields.Enum(opName, "op", PatchOps, null);
        if (op == "zero")
        {
            var size = JsonFields.Integer(message, "size", 0);
            var offset = JsonFields.Integer(message, "offset", 0, 0);
            var flush = JsonFields.Boolean(message, "flush", false);
            var (ticket, pool) = await OpenAsync(request, ticketId, TicketOp.Write);
            if (offset > ticket.Spec.Size || size > ticket.Spec.Size - offset)
            {
                throw HttpErrorException.OutOfAllowedRange(ticket.Spec.Size);
            }
            var limit = Math.Min(ticket.Spec.Size, pool.Export.Size);
            if (offset > limit || size > limit - offset)
            {
                throw HttpErrorException.RangeNotSatisfiable($"Requested more bytes than available: {offset + size} > {limit}", limit);
            }
            LogZero(ticket.Spec.TransferId, offset, size, flush);
            await RunOperationAsync(request, ticket, offset, DataOperationKind.Zero, async (operation, ct) =>
            {
                await Transfers.ZeroAsync(pool, offset, size, ticket.Spec.Sparse, _backend.ZeroStep, _backend.ChunkSize, operation, ct);
                if (flush)
                {
                    await FlushAsync(request, pool, ct);
                }
            });
        }
        else
        {
            var (ticket, pool) = await OpenAsync(request, ticketId, TicketOp.Write);
            LogFlush(ticket.Spec.TransferId);
            await RunOperationAsync(request, ticket, 0, DataOperationKind.Flush, (_, ct) => Transfers.FlushAsync(pool, ct));
        }
    }

    /// <summary>Reads a small JSON body whole (PATCH). The body is then consumed, so errors keep the
    /// connection alive, as in imageio.</summary>
    internal static async Task<JsonElement> ReadJsonBodyAsync(HttpContext http, string errorPrefix)
    {
        if (http.Request.ContentLength > MaxPatchBody)
        {
            throw new HttpErrorException(StatusCodes.Status413PayloadTooLarge, $"Request body too large: the limit is {MaxPatchBody} bytes", closeConnection: true);
        }
        using var body = new MemoryStream();
        var buffer = new byte[8192];
        int n;
        while ((n = await ReadBodyAsync(http, buffer)) > 0)
        {
            if (body.Length + n > MaxPatchBody)
            {
                throw new HttpErrorException(StatusCodes.Status413PayloadTooLarge, $"Request body too large: the limit is {MaxPatchBody} bytes", closeConnection: true);
            }
            body.Write(buffer, 0, n);
        }
        http.Items[BodyReadKey] = true;
        var bytes = body.ToArray();
        if (!System.Text.Unicode.Utf8.IsValid(bytes))
        {
            // JsonDocument accepts invalid UTF-8 inside strings and fails only when they are read.
            throw HttpErrorException.BadRequest($"{errorPrefix} the body is not valid UTF-8");
        }
        try
        {
            using var document = JsonDocument.Parse(bytes);
            return document.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw HttpErrorException.BadRequest($"{errorPrefix} {e.Message}");
        }
    }

    private static async ValueTask<int> ReadBodyAsync(HttpContext http, byte[] buffer)
    {
        try
        {
            return await http.Request.Body.ReadAsync(buffer, http.RequestAborted);
        }
        catch (IOException e) when (e is not BadHttpRequestException && !http.RequestAborted.IsCancellationRequested)
        {
            // A framing error Kestrel reports as a plain IOException (a chunk size that overflows).
            throw new HttpErrorException(StatusCodes.Status400BadRequest, $"Invalid request body: {e.Message}", closeConnection: true);
        }
    }

    private static string? QueryValue(HttpContext http, string name)
        => http.Request.Query.TryGetValue(name, out var values) ? values.ToString() : null;

    [LoggerMessage(EventId = 2101, Level = LogLevel.Information, Message = "OPTIONS transfer={TransferId}")]
    private partial void LogOptions(string transferId);

    [LoggerMessage(EventId = 2102, Level = LogLevel.Debug, Message = "READ transfer={TransferId} offset={Offset} size={Size}")]
    private partial void LogRead(string transferId, long offset, long size);

    [LoggerMessage(EventId = 2103, Level = LogLevel.Debug, Message = "WRITE transfer={TransferId} offset={Offset} size={Size} flush={Flush}")]
    private partial void LogWrite(string transferId, long offset, long size, bool flush);

    [LoggerMessage(EventId = 2104, Level = LogLevel.Debug, Message = "ZERO transfer={TransferId} offset={Offset} size={Size} flush={Flush}")]
    private partial void LogZero(string transferId, long offset, long size, bool flush);

    [LoggerMessage(EventId = 2105, Level = LogLevel.Information, Message = "FLUSH transfer={TransferId}")]
    private partial void LogFlush(string transferId);
}
