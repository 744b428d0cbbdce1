using Microsoft.Extensions.Hosting.Systemd;

namespace ImageioProxy.Observability;

/// <summary>Whether the whole daemon serves: every listener (data, local, control) is up and shutdown
/// has not begun. Tells systemd READY=1 / STOPPING=1 (Type=notify) at those two moments, so
/// `systemctl start` returns only once the control socket accepts tickets.</summary>
public sealed class ServiceReadiness
{
    private readonly ISystemdNotifier _systemd;
    private readonly IHostApplicationLifetime _lifetime;
    private readonly ILogger<ServiceReadiness> _logger;
    private int _started;
    private int _stopping;

    public ServiceReadiness(ISystemdNotifier systemd, IHostApplicationLifetime lifetime, ILogger<ServiceReadiness> logger)
    {
        _systemd = systemd;
        _lifetime = lifetime;
        _logger = logger;
    }

    /// <summary>True between <see cref="MarkStarted"/> and the start of shutdown.</summary>
    public bool IsServing => Volatile.Read(ref _started) == 1 && Volatile.Read(ref _stopping) == 0;

    public bool IsStopping => Volatile.Read(ref _stopping) == 1;

    /// <summary>Called once every listener accepts connections.</summary>
    public void MarkStarted()
    {
        if (Interlocked.Exchange(ref _started, 1) == 1)
        {
            return;
        }
        _lifetime.ApplicationStopping.Register(MarkStopping);
        Notify(ServiceState.Ready);
    }

    /// <summary>Readiness fails from now on (Kubernetes stops routing), and systemd learns we stop.</summary>
    public void MarkStopping()
    {
        if (Interlocked.Exchange(ref _stopping, 1) == 1)
        {
            return;
        }
        Notify(ServiceState.Stopping);
    }

    private void Notify(ServiceState state)
    {
        if (_systemd.IsEnabled)
        {
            _systemd.Notify(state);
            _logger.SystemdNotified(state.ToString().Trim());
        }
    }
}
