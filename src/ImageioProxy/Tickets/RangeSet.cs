namespace ImageioProxy.Tickets;

/// <summary>A union of byte ranges, for the ticket's "transferred" (imageio _internal/measure.py):
/// overlapping and adjacent ranges are counted once.</summary>
internal sealed class RangeSet
{
    // Sorted, disjoint, non-adjacent [Start, End) ranges.
    private readonly List<(long Start, long End)> _ranges = [];

    public RangeSet() { }

    public RangeSet(RangeSet other) => _ranges.AddRange(other._ranges);

    public void Add(long start, long end)
    {
        if (end <= start)
        {
            return;
        }
        var index = 0;
        while (index < _ranges.Count && _ranges[index].End < start)
        {
            index++;
        }
        while (index < _ranges.Count && _ranges[index].Start <= end)
        {
            start = Math.Min(start, _ranges[index].Start);
            end = Math.Max(end, _ranges[index].End);
            _ranges.RemoveAt(index);
        }
        _ranges.Insert(index, (start, end));
    }

    public long Sum()
    {
        long total = 0;
        foreach (var (start, end) in _ranges)
        {
            total += end - start;
        }
        return total;
    }
}
