namespace ImageioProxy.Client.Tests;

public class TransferPlannerTests
{
    private const int MiB = 1024 * 1024;
    private const TransferOperationKind Data = TransferOperationKind.Data;
    private const TransferOperationKind Zero = TransferOperationKind.Zero;

    [Fact]
    public void Plan_SplitsDataIntoChunksAndZeroesIntoSteps()
    {
        var plan = TransferPlanner.Plan(
            [new ImageExtent(0, 20 * MiB, Zero: false), new ImageExtent(20 * MiB, 300L * MiB, Zero: true)], chunkSize: 8 * MiB);

        plan.Should().Equal(
            new TransferOperation(Data, 0, 8 * MiB),
            new TransferOperation(Data, 8 * MiB, 8 * MiB),
            new TransferOperation(Data, 16 * MiB, 4 * MiB),
            new TransferOperation(Zero, 20 * MiB, 128L * MiB),
            new TransferOperation(Zero, 148L * MiB, 128L * MiB),
            new TransferOperation(Zero, 276L * MiB, 44L * MiB));
    }

    [Fact]
    public void Plan_SendsShortZeroRunsBetweenDataAsData()
    {
        var plan = TransferPlanner.Plan(
        [
            new ImageExtent(0, 1 * MiB, Zero: false),
            new ImageExtent(1 * MiB, 4096, Zero: true, Hole: true),
            new ImageExtent(MiB + 4096, MiB - 4096, Zero: false),
        ], chunkSize: 8 * MiB);

        plan.Should().Equal(new TransferOperation(Data, 0, 2 * MiB));
    }

    [Fact]
    public void Plan_KeepsShortZeroRunsAtTheEdges()
    {
        var plan = TransferPlanner.Plan(
            [new ImageExtent(0, 4096, Zero: true), new ImageExtent(4096, MiB, Zero: false), new ImageExtent(MiB + 4096, 4096, Zero: true)], 8 * MiB);

        plan.Should().Equal(
            new TransferOperation(Zero, 0, 4096),
            new TransferOperation(Data, 4096, MiB),
            new TransferOperation(Zero, MiB + 4096, 4096));
    }

    [Fact]
    public void Plan_MergesAdjacentExtentsOfOneKindAndCopiesGapsAsData()
    {
        var plan = TransferPlanner.Plan(
        [
            new ImageExtent(0, MiB, Zero: true),
            new ImageExtent(MiB, MiB, Zero: true, Hole: true),
            // A gap [2 MiB, 3 MiB): nothing was said about it, so it is copied.
            new ImageExtent(3 * MiB, MiB, Zero: false),
        ], 8 * MiB);

        plan.Should().Equal(new TransferOperation(Zero, 0, 2 * MiB), new TransferOperation(Data, 2 * MiB, 2 * MiB));
    }

    [Fact]
    public void Plan_RejectsOverlappingExtents()
    {
        var plan = () => TransferPlanner.Plan([new ImageExtent(0, MiB, false), new ImageExtent(MiB / 2, MiB, true)], 8 * MiB);

        plan.Should().Throw<ArgumentException>().WithMessage("*overlap*");
    }

    [Fact]
    public void Plan_CoversEveryByteOnce()
    {
        var random = new Random(7);
        var extents = new List<ImageExtent>();
        long offset = 0;
        for (var i = 0; i < 500; i++)
        {
            var length = random.Next(1, 64) * 4096L;
            extents.Add(new ImageExtent(offset, length, random.Next(2) == 0));
            offset += length;
        }

        var plan = TransferPlanner.Plan(extents, chunkSize: 256 * 1024);

        plan.Sum(o => o.Length).Should().Be(offset);
        plan.Zip(plan.Skip(1)).Should().OnlyContain(p => p.First.End == p.Second.Offset);
        plan.Where(o => o.Kind == Data).Should().OnlyContain(o => o.Length <= 256 * 1024);
    }
}
