using System.Text.Json;
using ImageioProxy.Configuration;
using ImageioProxy.Tickets;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Options;
using NbdClient;

namespace ImageioProxy.Observability;

/// <summary>Ready while every listener serves and shutdown has not begun (ecosystem.md §2.2: liveness
/// checks the process only, readiness its dependencies).</summary>
public sealed class ServingHealthCheck(ServiceReadiness readiness) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
        => Task.FromResult(readiness.IsServing ? HealthCheckResult.Healthy("serving")
            : readiness.IsStopping ? HealthCheckResult.Unhealthy("stopping") : HealthCheckResult.Unhealthy("starting"));
}

/// <summary>With a startup ticket (Daemon:TicketFile, the container set-up), ready only when its qemu-nbd
/// answers an NBD handshake: a sidecar that is not up yet must keep traffic away. Skipped when the
/// ticket's pool already holds connections. Other tickets come and go with the engine and are not probed.</summary>
public sealed class StartupTicketBackendHealthCheck(
    IOptions<DaemonOptions> daemon, IOptions<MonitoringOptions> monitoring, TicketStore tickets,
    ILogger<StartupTicketBackendHealthCheck> logger) : IHealthCheck
{
    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var file = daemon.Value.TicketFile;
        if (file.Length == 0)
        {
            return HealthCheckResult.Healthy("no startup ticket");
        }
        TicketSpec spec;
        try
        {
            using var document = JsonDocument.Parse(await File.ReadAllBytesAsync(file, cancellationToken));
            if (!TicketSpec.TryParse(document.RootElement, tickets.DefaultInactivityTimeout, out spec, out var error))
            {
                return HealthCheckResult.Unhealthy($"invalid startup ticket: {error}");
            }
        }
        catch (Exception e) when (e is IOException or JsonException or UnauthorizedAccessException)
        {
            return HealthCheckResult.Unhealthy($"cannot read the startup ticket: {e.Message}");
        }
        if (tickets.Find(spec.Uuid)?.OpenPool is { ConnectionCount: > 0 })
        {
            return HealthCheckResult.Healthy("backend connected");
        }
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(Math.Max(1, monitoring.Value.ReadyTimeout)));
        try
        {
            var options = new NbdClientOptions();
            await using var connection = await NbdConnection.ConnectAsync(spec.Endpoint, options, timeout.Token);
            return HealthCheckResult.Healthy("backend answers");
        }
        catch (Exception e) when (e is NbdException or IOException or OperationCanceledException or System.Net.Sockets.SocketException)
        {
            var reason = e is OperationCanceledException ? "no handshake within Monitoring:ReadyTimeout" : e.Message;
            logger.BackendNotReady(spec.TransferId, reason);
            return HealthCheckResult.Unhealthy($"backend of transfer {spec.TransferId} does not answer: {reason}");
        }
    }
}
