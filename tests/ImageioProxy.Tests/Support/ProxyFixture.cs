using System.Net.Http.Json;
using System.Net.Sockets;
using ImageioProxy.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using TestSupport;

namespace ImageioProxy.Tests.Support;

/// <summary>A real qemu-nbd serving a temporary image on a unix socket, and the proxy in-process with
/// the remote service on 127.0.0.1 port 0 (plain HTTP), the local service and the control service on
/// unix sockets in the same temporary directory. Share it per test class with IClassFixture; subclass
/// it (protected constructor) for another format, size, configuration or TimeProvider.</summary>
public class ProxyFixture : IAsyncLifetime
{
    public const long DefaultImageSize = 64L * 1024 * 1024;

    private readonly IReadOnlyDictionary<string, string?> _settings;
    private readonly TimeProvider? _time;
    private QemuNbdServer? _qemuNbd;

    public ProxyFixture() : this("raw") { }

    protected ProxyFixture(string format, long imageSize = DefaultImageSize, IReadOnlyDictionary<string, string?>? settings = null,
        TimeProvider? time = null)
    {
        Format = format;
        ImageSize = imageSize;
        _settings = settings ?? new Dictionary<string, string?>();
        _time = time;
        Directory = System.IO.Directory.CreateTempSubdirectory("imageio-proxy-test-").FullName;
        ImagePath = Path.Combine(Directory, $"disk.{format}");
        LocalSocket = Path.Combine(Directory, "local.sock");
        ControlSocket = Path.Combine(Directory, "control.sock");
    }

    public string Format { get; }
    public long ImageSize { get; }
    public string Directory { get; }
    public string ImagePath { get; }
    /// <summary>The unix socket of this fixture's qemu-nbd (once started).</summary>
    public string NbdSocket => _qemuNbd?.SocketPath ?? throw new InvalidOperationException("qemu-nbd is not started");
    public string LocalSocket { get; }
    public string ControlSocket { get; }

    /// <summary>The ticket "url" for this fixture's qemu-nbd.</summary>
    public string NbdUrl => $"nbd:unix:{NbdSocket}";

    /// <summary>qemu-img's name of the same export, for compare and convert.</summary>
    public string NbdUri => $"nbd+unix:///?socket={NbdSocket}";

    public ProxyServer Server { get; private set; } = null!;

    public Uri RemoteUri => new($"http://127.0.0.1:{Server.RemotePort}");

    /// <summary>HttpClient for the remote data service.</summary>
    public HttpClient Data { get; private set; } = null!;

    /// <summary>HttpClient for the control socket.</summary>
    public HttpClient Control { get; private set; } = null!;

    /// <summary>http://127.0.0.1:port/images/{id}{suffix}</summary>
    public string ImageUrl(string ticketId, string suffix = "") => $"{RemoteUri}images/{ticketId}{suffix}";

    public async Task InitializeAsync()
    {
        await Processes.CheckAsync("qemu-img", "create", "-q", "-f", Format, ImagePath, ImageSize.ToString(System.Globalization.CultureInfo.InvariantCulture));
        // --shared=0: many tickets of one test class each open a pool on this export.
        _qemuNbd = await QemuNbdServer.StartAsync(ImagePath, new QemuNbdOptions
        {
            Format = Format, Shared = 0, Cache = "writeback", AllocationDepth = true,
        });

        var settings = new Dictionary<string, string?>
        {
            ["Remote:Host"] = "127.0.0.1",
            ["Remote:Port"] = "0",
            ["Tls:Enable"] = "false",
            ["Local:Socket"] = LocalSocket,
            ["Control:Socket"] = ControlSocket,
            ["Control:RemoveTimeout"] = "2",
            ["Logging:LogLevel:Default"] = "Warning",
        };
        foreach (var (key, value) in _settings)
        {
            settings[key] = value;
        }
        Server = ProxyServer.Create([], config => config.AddInMemoryCollection(settings), ConfigureServices, clock: _time);
        await Server.StartAsync();
        Data = new HttpClient { BaseAddress = RemoteUri };
        Control = UnixClient(ControlSocket);
    }

    /// <summary>Extra services for both hosts (a capturing ILoggerProvider, say).</summary>
    protected virtual void ConfigureServices(IServiceCollection services)
    {
    }

    public async Task DisposeAsync()
    {
        Data?.Dispose();
        Control?.Dispose();
        if (Server is not null)
        {
            await Server.DisposeAsync();
        }
        if (_qemuNbd is not null)
        {
            await _qemuNbd.DisposeAsync();
        }
        System.IO.Directory.Delete(Directory, recursive: true);
    }

    /// <summary>An HttpClient talking HTTP over a unix socket (Host: localhost).</summary>
    public static HttpClient UnixClient(string socketPath) => new(new SocketsHttpHandler
    {
        ConnectCallback = async (_, cancellationToken) =>
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cancellationToken);
                return new NetworkStream(socket, ownsSocket: true);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        },
    })
    { BaseAddress = new Uri("http://localhost") };

    /// <summary>A ticket for this fixture's image; override fields with <paramref name="changes"/>
    /// (a null value removes the field).</summary>
    public Dictionary<string, object?> Ticket(string[]? ops = null, Action<Dictionary<string, object?>>? changes = null)
    {
        var ticket = new Dictionary<string, object?>
        {
            ["uuid"] = Guid.NewGuid().ToString(),
            ["size"] = ImageSize,
            ["ops"] = ops ?? ["read", "write"],
            ["timeout"] = 300,
            ["url"] = NbdUrl,
            ["transfer_id"] = $"test-{Guid.NewGuid():N}",
        };
        changes?.Invoke(ticket);
        foreach (var key in ticket.Where(p => p.Value is null).Select(p => p.Key).ToList())
        {
            ticket.Remove(key);
        }
        return ticket;
    }

    /// <summary>Installs a ticket through the control socket and returns its id.</summary>
    public async Task<string> AddTicketAsync(string[]? ops = null, Action<Dictionary<string, object?>>? changes = null)
    {
        var ticket = Ticket(ops, changes);
        var id = (string)ticket["uuid"]!;
        using var response = await Control.PutAsJsonAsync($"/tickets/{id}", ticket);
        if (!response.IsSuccessStatusCode)
        {
            throw new InvalidOperationException($"PUT /tickets failed: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}");
        }
        return id;
    }

    public async Task RemoveTicketAsync(string ticketId)
    {
        using var response = await Control.DeleteAsync($"/tickets/{ticketId}");
        response.EnsureSuccessStatusCode();
    }

    /// <summary>curl -sS against anything; use <see cref="ImageUrl"/> for URLs.</summary>
    public Task<CurlResult> CurlAsync(params string[] args) => Processes.CurlAsync(Directory, args);

    /// <summary>A file of <paramref name="size"/> bytes in the fixture directory: random data with zero
    /// runs and an unaligned tail, so uploads exercise data, zeroes and partial blocks.</summary>
    public string CreateSourceFile(long size, int seed)
    {
        var path = Path.Combine(Directory, $"source-{seed}-{Guid.NewGuid():N}.raw");
        var random = new Random(seed);
        using var file = File.Create(path);
        var block = new byte[1024 * 1024];
        for (long written = 0; written < size;)
        {
            var n = (int)Math.Min(block.Length, size - written);
            if ((written / block.Length) % 3 == 1)
            {
                Array.Clear(block);
            }
            else
            {
                random.NextBytes(block);
            }
            file.Write(block, 0, n);
            written += n;
        }
        return path;
    }

    /// <summary>qemu-img compare of a raw source with what qemu-nbd serves now (raw view of any format).</summary>
    public async Task<ProcessResult> CompareAsync(string rawSource)
        => await Processes.RunAsync("qemu-img", ["compare", "-f", "raw", "-F", "raw", rawSource, NbdUri]);

    /// <summary>Reads the whole export through qemu-nbd (not the proxy).</summary>
    public async Task<byte[]> ReadExportAsync()
    {
        var copy = Path.Combine(Directory, $"export-{Guid.NewGuid():N}.raw");
        try
        {
            await Processes.CheckAsync("qemu-img", "convert", "-f", "raw", "-O", "raw", NbdUri, copy);
            return await File.ReadAllBytesAsync(copy);
        }
        finally
        {
            File.Delete(copy);
        }
    }
}

/// <summary>The same, with a qcow2 image.</summary>
public sealed class Qcow2ProxyFixture : ProxyFixture
{
    public Qcow2ProxyFixture() : base("qcow2") { }
}
