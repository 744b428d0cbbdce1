using System.Text;
using System.Text.Json;
using ImageioProxy.Http;
using ImageioProxy.Tickets;

namespace ImageioProxy.Control;

/// <summary>The control service on its unix socket: PUT/GET/PATCH/DELETE /tickets/{id} and
/// DELETE /tickets/ (imageio-api.md §4). Access to the socket is the only authentication.</summary>
public sealed partial class ControlApi
{
    private const string TicketsPrefix = "/tickets/";

    private readonly TicketStore _tickets;
    private readonly ILogger<ControlApi> _logger;

    public ControlApi(TicketStore tickets, ILogger<ControlApi> logger)
    {
        _tickets = tickets;
        _logger = logger;
    }

    public async Task HandleAsync(HttpContext http)
    {
        try
        {
            var path = http.Request.Path.Value ?? "/";
            if (!path.StartsWith(TicketsPrefix, StringComparison.Ordinal))
            {
                throw HttpErrorException.NotFound($"No handler for '{path}'");
            }
            var ticketId = path[TicketsPrefix.Length..];
            switch (http.Request.Method)
            {
                case "GET":
                    await GetAsync(http, ticketId);
                    break;
                case "PUT":
                    await PutAsync(http, ticketId);
                    break;
                case "PATCH":
                    await PatchAsync(http, ticketId);
                    break;
                case "DELETE":
                    await DeleteAsync(http, ticketId);
                    break;
                default:
                    throw new HttpErrorException(StatusCodes.Status405MethodNotAllowed, $"Method '{http.Request.Method}' not defined for '/tickets/'")
                    {
                        Allow = "GET,PUT,PATCH,DELETE",
                    };
            }
        }
        catch (HttpErrorException e)
        {
            await WriteErrorAsync(http, e);
        }
        catch (OperationCanceledException) when (http.RequestAborted.IsCancellationRequested)
        {
        }
        catch (BadHttpRequestException e)
        {
            // Kestrel rejected the body (invalid chunked encoding, too slow): the client's fault.
            await WriteErrorAsync(http, new HttpErrorException(e.StatusCode, e.Message, closeConnection: true));
        }
        catch (Exception e)
        {
            LogRequestFailed(http.Request.Method, e);
            await WriteErrorAsync(http, new HttpErrorException(StatusCodes.Status500InternalServerError, "Server failed to perform the request, check logs"));
        }
    }

    private Task GetAsync(HttpContext http, string ticketId)
    {
        RequireId(ticketId);
        var ticket = _tickets.Find(ticketId) ?? throw HttpErrorException.NotFound($"No such ticket '{ticketId}'");
        return DataApi.WriteJsonAsync(http, StatusCodes.Status200OK, ticket.WriteStatus);
    }

    private async Task PutAsync(HttpContext http, string ticketId)
    {
        RequireId(ticketId);
        var json = await DataApi.ReadJsonBodyAsync(http, "Ticket is not in a json format:");
        // The path id is only checked for non-empty; the ticket is stored under its uuid (imageio-api.md §4).
        if (!TicketSpec.TryParse(json, _tickets.DefaultInactivityTimeout, out var spec, out var error))
        {
            throw HttpErrorException.BadRequest($"Invalid ticket: {error}");
        }
        _tickets.Add(spec);
        http.Response.StatusCode = StatusCodes.Status200OK;
        http.Response.ContentLength = 0;
    }

    private async Task PatchAsync(HttpContext http, string ticketId)
    {
        RequireId(ticketId);
        var patch = await DataApi.ReadJsonBodyAsync(http, "Invalid patch:");
        if (patch.ValueKind != JsonValueKind.Object)
        {
            throw HttpErrorException.BadRequest("Invalid patch: expecting an object");
        }
        var timeout = JsonFields.Integer(patch, "timeout", 0);
        var ticket = _tickets.Find(ticketId) ?? throw HttpErrorException.NotFound($"No such ticket: {ticketId}");
        LogExtend(ticket.Spec.TransferId, timeout);
        ticket.Extend(timeout);
        http.Response.StatusCode = StatusCodes.Status200OK;
        http.Response.ContentLength = 0;
    }

    private async Task DeleteAsync(HttpContext http, string ticketId)
    {
        if (ticketId.Length == 0)
        {
            _tickets.Clear();
        }
        else
        {
            var transferId = _tickets.Find(ticketId)?.Spec.TransferId;
            if (!await _tickets.RemoveAsync(ticketId, http.RequestAborted))
            {
                // Still busy: the caller retries later (imageio-api.md §5.5).
                throw new HttpErrorException(StatusCodes.Status409Conflict, $"Timeout cancelling transfer {transferId}");
            }
        }
        http.Response.StatusCode = StatusCodes.Status204NoContent;
    }

    private static void RequireId(string ticketId)
    {
        if (ticketId.Length == 0)
        {
            throw HttpErrorException.BadRequest("Ticket id is required");
        }
    }

    private static async Task WriteErrorAsync(HttpContext http, HttpErrorException error)
    {
        if (http.Response.HasStarted)
        {
            http.Abort();
            return;
        }
        http.Response.Clear();
        http.Response.StatusCode = error.Status;
        if (error.CloseConnection)
        {
            http.Response.Headers.Connection = "close";
        }
        if (error.Allow is not null)
        {
            http.Response.Headers.Allow = error.Allow;
        }
        var body = Encoding.UTF8.GetBytes(error.Message + "\n");
        http.Response.ContentType = "text/plain; charset=UTF-8";
        http.Response.ContentLength = body.Length;
        await http.Response.Body.WriteAsync(body, http.RequestAborted);
    }

    [LoggerMessage(EventId = 4001, Level = LogLevel.Error, Message = "Control {Method} request failed")]
    private partial void LogRequestFailed(string method, Exception exception);

    [LoggerMessage(EventId = 4002, Level = LogLevel.Information, Message = "EXTEND transfer={TransferId} timeout={Timeout}")]
    private partial void LogExtend(string transferId, long timeout);
}
