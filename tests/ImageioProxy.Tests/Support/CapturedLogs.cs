using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace ImageioProxy.Tests.Support;

/// <summary>One captured log entry: rendered message, structured state, scopes and exception text.</summary>
public sealed record CapturedLog(string Category, LogLevel Level, EventId EventId, string Message,
    IReadOnlyList<KeyValuePair<string, object?>> State, IReadOnlyList<string> Scopes, string? Exception)
{
    public object? this[string name] => State.FirstOrDefault(p => p.Key == name).Value;

    /// <summary>Everything this entry would put in any log sink, as one string.</summary>
    public string AllText => string.Join("\n", [Category, Message, .. State.Select(p => $"{p.Key}={p.Value}"), .. Scopes, Exception ?? ""]);
}

/// <summary>A logger provider that keeps every entry, with its scopes, at every level.</summary>
public sealed class CapturedLogs : ILoggerProvider, ISupportExternalScope
{
    private readonly ConcurrentQueue<CapturedLog> _entries = new();
    private IExternalScopeProvider _scopes = new LoggerExternalScopeProvider();

    public IReadOnlyList<CapturedLog> Entries => [.. _entries];

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void SetScopeProvider(IExternalScopeProvider scopeProvider) => _scopes = scopeProvider;

    /// <summary>Waits (bounded) for an entry matching <paramref name="match"/>.</summary>
    public async Task<CapturedLog> WaitForAsync(Func<CapturedLog, bool> match, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(20));
        while (true)
        {
            var found = _entries.FirstOrDefault(match);
            if (found is not null)
            {
                return found;
            }
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"no matching log entry; got:\n{string.Join("\n", _entries.Select(e => $"{e.EventId.Id} {e.Message}"))}");
            }
            await Task.Delay(20);
        }
    }

    public void Dispose()
    {
    }

    private sealed class Logger(CapturedLogs owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => owner._scopes.Push(state);

        public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            var scopes = new List<string>();
            owner._scopes.ForEachScope((scope, list) =>
            {
                list.Add(scope?.ToString() ?? "");
                if (scope is IEnumerable<KeyValuePair<string, object?>> pairs)
                {
                    list.AddRange(pairs.Select(p => $"{p.Key}={p.Value}"));
                }
            }, scopes);
            var pairsOfState = state as IEnumerable<KeyValuePair<string, object?>> ?? [];
            owner._entries.Enqueue(new CapturedLog(category, logLevel, eventId, formatter(state, exception), [.. pairsOfState], scopes, exception?.ToString()));
        }
    }
}
