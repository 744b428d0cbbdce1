using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace ImageioProxy.Client.Tests.Support;

/// <summary>A small imageio-compatible server (real Kestrel on 127.0.0.1, port 0) holding one image in
/// memory, for what our proxy cannot be configured to do: a server without the "zero" feature (or other
/// features), and requests that block until the test cancels the client. It serves OPTIONS, ranged GET, PUT
/// with Content-Range, PATCH zero/flush and /extents (one data extent) for any ticket id.</summary>
public sealed class StubImageioServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly byte[] _image;
    private readonly TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _puts;
    private int _gets;

    private StubImageioServer(WebApplication app, byte[] image, string[] features)
    {
        _app = app;
        _image = image;
        Features = features;
    }

    public string[] Features { get; }

    /// <summary>"PUT", "PATCH zero", "PATCH flush", "GET", "OPTIONS", "GET extents", in arrival order.</summary>
    public ConcurrentQueue<string> Requests { get; } = new();

    /// <summary>The n-th PUT (1-based) and every later one wait for <see cref="DisposeAsync"/> or the client
    /// going away; 0 = never block.</summary>
    public int BlockPutsFrom { get; set; }

    /// <summary>The same for ranged GETs of image data.</summary>
    public int BlockGetsFrom { get; set; }

    /// <summary>Completes when a request is being held.</summary>
    public TaskCompletionSource RequestBlocked { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>The image's bytes; tests fill them before a download and read them after an upload.</summary>
    public byte[] Image => _image;

    public string Url(string ticket = "stub") => $"{_app.Urls.First()}/images/{ticket}";

    public static async Task<StubImageioServer> StartAsync(long size, string[] features)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
        builder.Logging.ClearProviders();
        var app = builder.Build();
        var server = new StubImageioServer(app, new byte[size], features);
        app.MapMethods("/images/{ticket}", ["OPTIONS"], server.OptionsAsync);
        app.MapGet("/images/{ticket}/extents", server.ExtentsAsync);
        app.MapGet("/images/{ticket}", server.GetAsync);
        app.MapPut("/images/{ticket}", server.PutAsync);
        app.MapMethods("/images/{ticket}", ["PATCH"], server.PatchAsync);
        await app.StartAsync();
        return server;
    }

    public async ValueTask DisposeAsync()
    {
        _release.TrySetResult();
        using var stopTimeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        await _app.StopAsync(stopTimeout.Token);
        await _app.DisposeAsync();
    }

    private async Task OptionsAsync(HttpContext http)
    {
        Requests.Enqueue("OPTIONS");
        http.Response.Headers.Allow = "OPTIONS,GET,PUT,PATCH";
        // No max_writers/max_readers: the client must read that as 1.
        await http.Response.WriteAsJsonAsync(new Dictionary<string, object> { ["features"] = Features });
    }

    private async Task ExtentsAsync(HttpContext http)
    {
        Requests.Enqueue("GET extents");
        await http.Response.WriteAsJsonAsync(new[] { new Dictionary<string, object> { ["start"] = 0, ["length"] = _image.LongLength, ["zero"] = false, ["hole"] = false } });
    }

    private async Task GetAsync(HttpContext http)
    {
        Requests.Enqueue("GET");
        var range = http.Request.Headers.Range.ToString();
        var parts = range["bytes=".Length..].Split('-');
        var first = long.Parse(parts[0], CultureInfo.InvariantCulture);
        var last = parts[1].Length > 0 ? long.Parse(parts[1], CultureInfo.InvariantCulture) : _image.LongLength - 1;
        if (BlockGetsFrom > 0 && Interlocked.Increment(ref _gets) >= BlockGetsFrom)
        {
            await HoldAsync(http.RequestAborted);
        }
        http.Response.StatusCode = 206;
        http.Response.ContentLength = last - first + 1;
        http.Response.Headers.ContentRange = $"bytes {first}-{last}/{_image.LongLength}";
        await http.Response.Body.WriteAsync(_image.AsMemory((int)first, (int)(last - first + 1)), http.RequestAborted);
    }

    private async Task PutAsync(HttpContext http)
    {
        Requests.Enqueue("PUT");
        var offset = long.Parse(http.Request.Headers.ContentRange.ToString().Split(' ', '-')[1], CultureInfo.InvariantCulture);
        var length = (int)http.Request.ContentLength!.Value;
        if (offset + length > _image.LongLength)
        {
            http.Response.StatusCode = 416;
            return;
        }
        if (BlockPutsFrom > 0 && Interlocked.Increment(ref _puts) >= BlockPutsFrom)
        {
            await HoldAsync(http.RequestAborted);
        }
        await http.Request.Body.ReadExactlyAsync(_image.AsMemory((int)offset, length), http.RequestAborted);
    }

    private async Task PatchAsync(HttpContext http)
    {
        using var body = await JsonDocument.ParseAsync(http.Request.Body, cancellationToken: http.RequestAborted);
        var op = body.RootElement.GetProperty("op").GetString();
        Requests.Enqueue($"PATCH {op}");
        if (op == "zero")
        {
            if (!Features.Contains("zero"))
            {
                http.Response.StatusCode = 405;
                return;
            }
            var offset = body.RootElement.GetProperty("offset").GetInt64();
            var size = body.RootElement.GetProperty("size").GetInt64();
            Array.Clear(_image, (int)offset, (int)size);
        }
    }

    private async Task HoldAsync(CancellationToken requestAborted)
    {
        RequestBlocked.TrySetResult();
        await _release.Task.WaitAsync(requestAborted);
    }
}
