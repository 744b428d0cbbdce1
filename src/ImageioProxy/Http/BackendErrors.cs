using System.Globalization;
using System.Text.RegularExpressions;
using NbdClient;

namespace ImageioProxy.Http;

/// <summary>Turns NBD failures into HTTP errors that name their cause (docs/reliability.md, "What a 5xx
/// means"). imageio answers every backend failure with 500 "Server failed to perform the request, check
/// logs" (imageio-api.md §3.9); we keep 500 for errors the server reported and use the other 5xx codes
/// for what a proxy can tell apart, so operators and clients see why without reading logs. Every one of
/// them means the same to a writing client: resend everything written since the last successful flush
/// (imageio docs/images.md, "General errors").</summary>
internal static partial class BackendErrors
{
    private const string ResendHint = "; resend the data written since the last successful flush";

    /// <summary>The HTTP error for <paramref name="error"/>, or null when it is not a backend failure.</summary>
    public static HttpErrorException? Map(Exception error, string method)
    {
        var hint = HttpMethods.IsPut(method) || HttpMethods.IsPatch(method) ? ResendHint : "";
        return error switch
        {
            // Not trying to connect for a while: the pool's circuit breaker (Backend:Breaker*).
            NbdConnectionException { Reason: NbdConnectionFailure.CircuitOpen } e => new HttpErrorException(
                StatusCodes.Status503ServiceUnavailable, $"Backend unavailable: {Redact(e.Message)}{hint}")
            {
                RetryAfter = Seconds(e.RetryAfter ?? TimeSpan.FromSeconds(1)),
            },
            NbdConnectionException { Phase: NbdPhase.Connect or NbdPhase.Handshake or NbdPhase.Tls } e => new HttpErrorException(
                StatusCodes.Status503ServiceUnavailable, $"Backend unavailable: {Redact(e.Message)}{hint}")
            {
                RetryAfter = "1",
            },
            // A hung server: Backend:RequestTimeout abandoned the connection.
            NbdConnectionException { Reason: NbdConnectionFailure.RequestTimeout } e => new HttpErrorException(
                StatusCodes.Status504GatewayTimeout, $"Backend timeout: {Redact(e.Message)}{hint}"),
            NbdOutcomeUnknownException { InnerException: NbdConnectionException { Reason: NbdConnectionFailure.RequestTimeout } } e => new HttpErrorException(
                StatusCodes.Status504GatewayTimeout, $"Backend timeout, write outcome unknown: {Redact(e.Message)}{hint}"),
            // The write was sent and its reply lost: it is reported as failed, never as done.
            NbdOutcomeUnknownException e => new HttpErrorException(
                StatusCodes.Status502BadGateway, $"Backend connection lost, write outcome unknown: {Redact(e.Message)}{hint}"),
            NbdConnectionException e => new HttpErrorException(
                StatusCodes.Status502BadGateway, $"Backend connection lost: {Redact(e.Message)}{hint}"),
            NbdCommandException { Error: NbdErrorCode.ESHUTDOWN } e => new HttpErrorException(
                StatusCodes.Status503ServiceUnavailable, $"Backend shutting down: {Redact(e.Message)}{hint}")
            {
                RetryAfter = "1",
            },
            // The server answered with an error (EIO, ENOSPC, ...), or a flush found writes that were lost
            // with a dead connection: imageio's 500.
            NbdException e => new HttpErrorException(
                StatusCodes.Status500InternalServerError, $"Backend error: {Redact(e.Message)}{hint}"),
            _ => null,
        };
    }

    private static string Seconds(TimeSpan delay)
        => Math.Max(1, (long)Math.Ceiling(delay.TotalSeconds)).ToString(CultureInfo.InvariantCulture);

    /// <summary>NBD URIs name local sockets and hosts behind the proxy; clients need the cause, not them.</summary>
    private static string Redact(string message) => NbdUri().Replace(message, "the NBD server");

    [GeneratedRegex(@"nbds?(\+unix)?://\S+|nbd:(unix:)?[^\s:]+(:\d+)?(:exportname=\S+)?")]
    private static partial Regex NbdUri();
}
