namespace ImageioProxy.Http;

/// <summary>An error answered as imageio does (imageio-api.md §2): the status, a plain-text body of
/// <see cref="Exception.Message"/> plus "\n", and optionally Content-Range and Connection: close.</summary>
public sealed class HttpErrorException : Exception
{
    public HttpErrorException(int status, string message, bool closeConnection = false, string? contentRange = null)
        : base(message)
    {
        Status = status;
        CloseConnection = closeConnection;
        ContentRange = contentRange;
    }

    public int Status { get; }

    /// <summary>Allow header of a 405.</summary>
    public string? Allow { get; init; }

    /// <summary>The connection cannot be reused, for example because the body was not read.</summary>
    public bool CloseConnection { get; }

    /// <summary>Content-Range of a 416 ("bytes */N").</summary>
    public string? ContentRange { get; }

    /// <summary>Retry-After of a 503, in seconds.</summary>
    public string? RetryAfter { get; init; }

    public static HttpErrorException BadRequest(string message) => new(StatusCodes.Status400BadRequest, message);

    /// <summary>Every authorization failure is a 403 that closes the connection (imageio-api.md §5.3).</summary>
    public static HttpErrorException Forbidden(string reason)
        => new(StatusCodes.Status403Forbidden, $"You are not allowed to access this resource: {reason}", closeConnection: true);

    public static HttpErrorException NotFound(string message) => new(StatusCodes.Status404NotFound, message);

    /// <summary>416 with Content-Range: bytes */N (a PUT's unread body closes the connection anyway).</summary>
    public static HttpErrorException RangeNotSatisfiable(string message, long completeLength)
        => new(StatusCodes.Status416RangeNotSatisfiable, message, contentRange: $"bytes */{completeLength}");

    /// <summary>imageio's validate.allowed_range failure.</summary>
    public static HttpErrorException OutOfAllowedRange(long ticketSize)
        => RangeNotSatisfiable("Requested range out of allowed range", ticketSize);
}
