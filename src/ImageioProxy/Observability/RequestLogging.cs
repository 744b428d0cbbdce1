using ImageioProxy.Hosting;

namespace ImageioProxy.Observability;

/// <summary>One Debug line per data request (category ImageioProxy.Observability.RequestLogging), with
/// the ticket id redacted; ASP.NET Core's own request logging and its RequestPath log scope are off
/// because they carry the id (ProxyServer.ConfigureLogging). Also counts requests per connection for
/// the CLOSE line and notes the client address a trusted proxy forwarded.</summary>
public sealed class RequestLogging(RequestDelegate next, ConnectionTracker connections, [FromKeyedServices(ProxyServer.ClockKey)] TimeProvider time,
    ILogger<RequestLogging> logger)
{
    public async Task InvokeAsync(HttpContext http)
    {
        // UseForwardedHeaders keeps the proxy's address in X-Original-For once it applied X-Forwarded-For.
        var forwarded = http.Request.Headers.ContainsKey("X-Original-For") ? http.Connection.RemoteIpAddress?.ToString() : null;
        connections.Find(http.Connection.Id)?.Stats.BeginRequest(forwarded);
        var started = time.GetTimestamp();
        try
        {
            await next(http);
        }
        finally
        {
            if (logger.IsEnabled(LogLevel.Debug))
            {
                var request = http.Request;
                logger.RequestFinished(request.Method, TicketIdRedaction.Redact(request.Path.Value + request.QueryString.Value), request.Protocol,
                    http.Response.StatusCode, time.GetElapsedTime(started).TotalMilliseconds,
                    http.Connection.RemoteIpAddress?.ToString() ?? "unix", request.Scheme, http.Connection.Id);
            }
        }
    }
}
