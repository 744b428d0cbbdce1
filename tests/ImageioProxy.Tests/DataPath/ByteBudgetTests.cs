using ImageioProxy.DataPath;

namespace ImageioProxy.Tests.DataPath;

public class ByteBudgetTests
{
    [Fact]
    public async Task Acquire_waits_until_enough_bytes_are_released_in_fifo_order()
    {
        var budget = new ByteBudget(100);
        (await budget.AcquireAsync(80, CancellationToken.None)).Should().Be(80);

        var large = budget.AcquireAsync(50, CancellationToken.None).AsTask();
        var small = budget.AcquireAsync(10, CancellationToken.None).AsTask();
        large.IsCompleted.Should().BeFalse();
        small.IsCompleted.Should().BeFalse("a waiting large request is not overtaken");
        budget.Release(80);

        (await large).Should().Be(50);
        (await small).Should().Be(10);
        budget.Available.Should().Be(40);
    }

    [Fact]
    public async Task Canceled_waiter_leaves_the_queue_and_unblocks_the_next()
    {
        var budget = new ByteBudget(100);
        await budget.AcquireAsync(60, CancellationToken.None);
        using var cancel = new CancellationTokenSource();
        var blocked = budget.AcquireAsync(100, cancel.Token).AsTask();
        var next = budget.AcquireAsync(40, CancellationToken.None).AsTask();

        await cancel.CancelAsync();

        await blocked.Invoking(t => t).Should().ThrowAsync<OperationCanceledException>();
        (await next).Should().Be(40);
    }

    [Fact]
    public async Task Requests_larger_than_the_capacity_are_clamped()
    {
        var budget = new ByteBudget(100);

        (await budget.AcquireAsync(1000, CancellationToken.None)).Should().Be(100);
        budget.Available.Should().Be(0);
    }
}
