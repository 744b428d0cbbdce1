namespace NbdClient.Internal;

internal static class Tasks
{
    /// <summary>Awaits every part; on failure rethrows the first failed part in list (offset) order
    /// rather than an AggregateException.</summary>
    public static async Task WhenAllInOrderAsync(List<Task> parts)
    {
        try
        {
            await Task.WhenAll(parts).ConfigureAwait(false);
        }
        catch
        {
            foreach (var part in parts)
            {
                if (part.IsFaulted)
                    await part.ConfigureAwait(false);
            }
            throw;
        }
    }
}
