using System.Buffers;
using System.Text;
using System.Text.Json;
using ImageioProxy.Checksums;
using ImageioProxy.Configuration;
using ImageioProxy.DataPath;
using ImageioProxy.Hosting;
using ImageioProxy.Observability;
using ImageioProxy.Tickets;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Options;
using NbdClient;

namespace ImageioProxy.Http;

/// <summary>The data service (remote TCP and local unix socket): /images/{id}[/extents|/checksum[/algorithms]]
/// and /info/. Routing and error texts follow imageio (imageio-api.md §1-§3) rather than ASP.NET Core's
/// defaults, so this is one explicit dispatcher instead of endpoint routing.</summary>
public sealed partial class DataApi
{
    /// <summary>The imageio version whose API we serve; /info/ reports it.</summary>
    public const string ImageioVersion = "2.5.3";

    private const string ImagesPrefix = "/images/";

    private readonly TicketStore _tickets;
    private readonly ConnectionTracker _connections;
    private readonly LocalOptions _local;
    private readonly DaemonOptions _daemon;
    private readonly BackendOptions _backend;
    private readonly ILogger<DataApi> _logger;
    private readonly ProxyMetrics _metrics;

    private readonly HttpOptions _http;
    private readonly TimeProvider _time;

    public DataApi(TicketStore tickets, ConnectionTracker connections, IOptions<LocalOptions> local,
        IOptions<DaemonOptions> daemon, IOptions<BackendOptions> backend, IOptions<HttpOptions> http,
        [FromKeyedServices(ProxyServer.ClockKey)] TimeProvider time, ILogger<DataApi> logger, ProxyMetrics metrics)
    {
        _metrics = metrics;
        _http = http.Value;
        _time = time;
        _tickets = tickets;
        _connections = connections;
        _local = local.Value;
        _daemon = daemon.Value;
        _backend = backend.Value;
        _logger = logger;
    }

    public async Task HandleAsync(HttpContext http)
    {
        var connection = _connections.Find(http.Connection.Id);
        if (connection is not null)
        {
            _connections.BeginRequest(connection);
        }
        try
        {
            if (http.Request.Query["close"] == "y")
            {
                // Used by the engine UI to close the connection after a transfer.
                http.Response.Headers.Connection = "close";
            }
            await RouteAsync(new DataRequest(http, connection));
        }
        catch (HttpErrorException e)
        {
            await WriteErrorAsync(http, e);
        }
        catch (OperationCanceledException) when (http.RequestAborted.IsCancellationRequested)
        {
            // The client went away; nobody to answer.
        }
        catch (Exception e) when (e is BadHttpRequestException or IOException && http.RequestAborted.IsCancellationRequested)
        {
        }
        catch (BadHttpRequestException e)
        {
            // Kestrel rejected the body while we read it: invalid chunked encoding (400), a client too
            // slow for Limits:MinRequestBodyDataRate (408), a body ending before Content-Length. The
            // client's fault, so its status and a plain message, never a 500; the rest of the body
            // cannot be trusted, so the connection closes.
            await WriteErrorAsync(http, new HttpErrorException(e.StatusCode, e.Message, closeConnection: true));
        }
        catch (Exception e) when (BackendErrors.Map(e, http.Request.Method) is { } backendError)
        {
            LogBackendFailed(http.Request.Method, backendError.Status, e);
            await WriteErrorAsync(http, backendError);
        }
        catch (Exception e)
        {
            LogRequestFailed(http.Request.Method, e);
            await WriteErrorAsync(http, new HttpErrorException(StatusCodes.Status500InternalServerError, "Server failed to perform the request, check logs"));
        }
        finally
        {
            if (connection is not null)
            {
                _connections.EndRequest(connection);
            }
        }
    }

    private Task RouteAsync(DataRequest request)
    {
        var path = request.Http.Request.Path.Value ?? "/";
        var method = request.Http.Request.Method;
        if (path is "/info/" or "/info")
        {
            return method switch
            {
                "GET" => InfoAsync(request),
                _ => throw MethodNotAllowed(method, path, "GET"),
            };
        }
        if (path is "/images" || !path.StartsWith(ImagesPrefix, StringComparison.Ordinal))
        {
            throw HttpErrorException.NotFound($"No handler for '{path}'");
        }

        var rest = path[ImagesPrefix.Length..];
        var slash = rest.IndexOf('/', StringComparison.Ordinal);
        var ticketId = slash < 0 ? rest : rest[..slash];
        var resource = slash < 0 ? "" : rest[(slash + 1)..];
        const string Redacted = "/images/{ticket_id}";
        switch (resource)
        {
            case "":
                return method switch
                {
                    "OPTIONS" => OptionsAsync(request, ticketId),
                    "GET" or "HEAD" => GetAsync(request, ticketId),
                    "PUT" => PutAsync(request, ticketId),
                    "PATCH" => PatchAsync(request, ticketId),
                    _ => throw MethodNotAllowed(method, Redacted, "OPTIONS,GET,HEAD,PUT,PATCH"),
                };
            case "extents":
                return method == "GET" ? ExtentsAsync(request, ticketId) : throw MethodNotAllowed(method, Redacted + "/extents", "GET");
            case "checksum":
                return method == "GET" ? ChecksumAsync(request, ticketId) : throw MethodNotAllowed(method, Redacted + "/checksum", "GET");
            case "checksum/algorithms":
                return method == "GET" ? AlgorithmsAsync(request) : throw MethodNotAllowed(method, Redacted + "/checksum/algorithms", "GET");
            default:
                // imageio's greedy regex turned a typo like /images/{id}/extent into "No such ticket";
                // a precise 404 says what is wrong (issue #211).
                throw HttpErrorException.NotFound($"No such resource '{resource}' under {Redacted}: expecting extents, checksum or checksum/algorithms");
        }
    }

    private static HttpErrorException MethodNotAllowed(string method, string path, string allow)
    {
        string[] known = ["GET", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "HEAD"];
        var message = known.Contains(method) ? $"Method '{method}' not defined for '{path}'" : $"Invalid method '{method}'";
        return new HttpErrorException(StatusCodes.Status405MethodNotAllowed, message) { Allow = allow };
    }

    private static Task InfoAsync(DataRequest request)
    {
        Cors.Allow(request.Http, "*");
        return WriteJsonAsync(request.Http, StatusCodes.Status200OK, w =>
        {
            w.WriteStartObject();
            w.WriteString("version", ImageioVersion);
            w.WriteEndObject();
        });
    }

    /// <summary>Authorizes, binds the connection to the ticket (connection limit, inactivity timeout)
    /// and opens the ticket's pool: imageio's authorize + backends.get.</summary>
    private async Task<(Ticket Ticket, NbdPool Pool)> OpenAsync(DataRequest request, string ticketId, TicketOp op)
    {
        var ticket = _tickets.Authorize(ticketId, op);
        if (request.Connection is not null)
        {
            _connections.Bind(request.Connection, ticket);
        }
        try
        {
            return (ticket, await ticket.GetPoolAsync(request.Http.RequestAborted));
        }
        catch (NbdException e)
        {
            LogBackendOpenFailed(ticket.Spec.TransferId, e);
            throw BackendErrors.Map(e, request.Http.Request.Method)!;
        }
    }

    /// <summary>Runs a data operation of the ticket, mapping cancellation by ticket removal to imageio's
    /// 403 "Transfer ... was canceled" (imageio-api.md §5.5). Records the operation in the metrics and
    /// in the connection's CLOSE line.</summary>
    private async Task RunOperationAsync(DataRequest request, Ticket ticket, long offset, DataOperationKind kind,
        Func<TicketOperation, CancellationToken, Task> run)
    {
        using var cancellation = CancellationTokenSource.CreateLinkedTokenSource(request.Http.RequestAborted, ticket.Canceled);
        var operation = ticket.BeginOperation(offset);
        var started = _metrics.Start();
        var succeeded = false;
        try
        {
            await run(operation, cancellation.Token);
            succeeded = true;
        }
        catch (Exception) when (ticket.IsCanceled && !request.Http.RequestAborted.IsCancellationRequested)
        {
            throw ticket.CanceledError();
        }
        finally
        {
            operation.Dispose();
            _metrics.RecordOperation(request.Connection, kind, operation.Done, started, succeeded);
        }
        if (ticket.IsCanceled)
        {
            throw ticket.CanceledError();
        }
    }

    /// <summary>The flush of PUT ?flush=y and PATCH zero "flush": timed as an operation of its own.</summary>
    private async Task FlushAsync(DataRequest request, NbdClient.NbdPool pool, CancellationToken cancellationToken)
    {
        var started = _metrics.Start();
        var succeeded = false;
        try
        {
            await Transfers.FlushAsync(pool, cancellationToken);
            succeeded = true;
        }
        finally
        {
            _metrics.RecordOperation(request.Connection, DataOperationKind.Flush, 0, started, succeeded);
        }
    }

    private static async Task WriteErrorAsync(HttpContext http, HttpErrorException error)
    {
        if (http.Response.HasStarted)
        {
            // The status line is out: the only way to report the failure is to drop the connection.
            http.Abort();
            return;
        }
        var allow = http.Response.Headers.Allow;
        var connection = http.Response.Headers.Connection;
        var cors = http.Response.Headers.AccessControlAllowOrigin;
        http.Response.Clear();
        http.Response.StatusCode = error.Status;
        if (!string.IsNullOrEmpty(connection) || error.CloseConnection || !BodyConsumed(http))
        {
            // A body we did not read makes the connection unusable (imageio-api.md §2).
            http.Response.Headers.Connection = "close";
        }
        if (!string.IsNullOrEmpty(cors))
        {
            http.Response.Headers.AccessControlAllowOrigin = cors;
        }
        if (error.Allow is not null)
        {
            http.Response.Headers.Allow = error.Allow;
        }
        else if (!string.IsNullOrEmpty(allow))
        {
            http.Response.Headers.Allow = allow;
        }
        if (error.ContentRange is not null)
        {
            http.Response.Headers.ContentRange = error.ContentRange;
        }
        if (error.RetryAfter is not null)
        {
            http.Response.Headers.RetryAfter = error.RetryAfter;
        }
        var body = Encoding.UTF8.GetBytes(error.Message + "\n");
        http.Response.ContentType = "text/plain; charset=UTF-8";
        http.Response.ContentLength = body.Length;
        try
        {
            await http.Response.Body.WriteAsync(body, http.RequestAborted);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException)
        {
            // The client went away before its error: nobody to tell.
        }
    }

    /// <summary>True when the request has no body left to read.</summary>
    private static bool BodyConsumed(HttpContext http)
    {
        if (http.Items.ContainsKey(BodyReadKey))
        {
            return true;
        }
        var request = http.Request;
        return request.ContentLength is 0
            || (request.ContentLength is null && http.Features.Get<IHttpRequestBodyDetectionFeature>()?.CanHaveBody != true);
    }

    internal static readonly object BodyReadKey = new();

    internal static async Task WriteJsonAsync(HttpContext http, int status, Action<Utf8JsonWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            write(writer);
        }
        buffer.Write("\n"u8);
        http.Response.StatusCode = status;
        http.Response.ContentType = "application/json";
        http.Response.ContentLength = buffer.WrittenCount;
        await http.Response.Body.WriteAsync(buffer.WrittenMemory, http.RequestAborted);
    }

    private InFlightBudgets Budgets(Ticket ticket) => new(ticket.Budget, _tickets.GlobalBudget);

    private static void RequireTicketId(string ticketId)
    {
        if (ticketId.Length == 0)
        {
            throw HttpErrorException.BadRequest("Ticket id is required");
        }
    }

    [LoggerMessage(EventId = 2001, Level = LogLevel.Error, Message = "{Method} request failed")]
    private partial void LogRequestFailed(string method, Exception exception);

    [LoggerMessage(EventId = 2002, Level = LogLevel.Error, Message = "Cannot open the NBD backend of transfer {TransferId}")]
    private partial void LogBackendOpenFailed(string transferId, Exception exception);

    [LoggerMessage(EventId = 2003, Level = LogLevel.Error, Message = "{Method} request failed with {Status}: the NBD backend failed")]
    private partial void LogBackendFailed(string method, int status, Exception exception);
}

/// <summary>A data request and the connection it arrived on (null only when not tracked, e.g. in tests).</summary>
internal readonly record struct DataRequest(HttpContext Http, ClientConnection? Connection);

/// <summary>imageio's CORS decorator (_internal/cors.py): headers only when the request asks.</summary>
internal static class Cors
{
    public static void Allow(HttpContext http, string allowMethods)
    {
        var request = http.Request.Headers;
        var response = http.Response.Headers;
        var modified = false;
        if (!string.IsNullOrEmpty(request.Origin))
        {
            response.AccessControlAllowOrigin = "*";
            modified = true;
        }
        if (!string.IsNullOrEmpty(request.AccessControlRequestHeaders))
        {
            response.AccessControlAllowHeaders = "*";
            modified = true;
        }
        if (!string.IsNullOrEmpty(request.AccessControlRequestMethod))
        {
            response.AccessControlAllowMethods = allowMethods;
            modified = true;
        }
        if (modified)
        {
            response.AccessControlMaxAge = "86400";
        }
    }
}
