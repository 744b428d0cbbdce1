namespace ImageioProxy.Client;

/// <summary>Why a transfer failed, so that scripts and tests can tell failures apart without parsing text.</summary>
public enum ImageioErrorKind
{
    /// <summary>The server refused the ticket (403): missing, expired, canceled, or it does not allow the
    /// operation (a read-only ticket and an upload).</summary>
    Forbidden,

    /// <summary>The server answered 416: the image is smaller than what was sent or asked for.</summary>
    ImageTooSmall,

    /// <summary>The server's TLS certificate could not be verified.</summary>
    Certificate,

    /// <summary>The server could not be reached, or the connection was lost or timed out mid-request.</summary>
    ConnectionLost,

    /// <summary>The server answered with another error status (400, 404, 405, 5xx, …).</summary>
    Server,

    /// <summary>The server's reply did not follow the imageio API (bad JSON, wrong length, …).</summary>
    Protocol,

    /// <summary>The local image or tool failed: qemu-img, qemu-nbd, the local file.</summary>
    Local,
}

/// <summary>A transfer failed; <see cref="Exception.Message"/> says what happened and what to change.</summary>
public sealed class ImageioClientException : Exception
{
    public ImageioClientException(ImageioErrorKind kind, string message, int? statusCode = null, Exception? inner = null)
        : base(message, inner)
    {
        Kind = kind;
        StatusCode = statusCode;
    }

    public ImageioErrorKind Kind { get; }

    /// <summary>The HTTP status when the server answered, otherwise null.</summary>
    public int? StatusCode { get; }
}
