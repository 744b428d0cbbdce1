using TestSupport;

namespace NbdClient.Tests.TestSupport;

public class QemuImgTests
{
    private const long Size = 24 * 1024 * 1024 + 4096;

    [Fact]
    public async Task WriteRandomImage_SameSeed_SameContent_DifferentSeed_Differs()
    {
        using var dir = TempDirectory.Create();
        var a = await QemuImg.WriteRandomImageAsync(dir.Combine("a.raw"), Size, seed: 7);
        var b = await QemuImg.WriteRandomImageAsync(dir.Combine("b.raw"), Size, seed: 7);
        var c = await QemuImg.WriteRandomImageAsync(dir.Combine("c.raw"), Size, seed: 8);

        new FileInfo(a.Path).Length.Should().Be(Size);
        a.Regions.Should().Equal(b.Regions);
        (await QemuImg.CompareAsync(a.Path, b.Path)).Identical.Should().BeTrue();
        var different = await QemuImg.CompareAsync(a.Path, c.Path);
        different.Identical.Should().BeFalse();
        different.Output.Should().Contain("mismatch");
    }

    [Fact]
    public async Task WriteRandomImage_HasDataZeroesAndHoles_WhereTheLayoutSays()
    {
        using var dir = TempDirectory.Create();
        var image = await QemuImg.WriteRandomImageAsync(dir.Combine("a.raw"), Size, seed: 1, zeroFraction: 0.5);

        image.Regions.Sum(r => r.Length).Should().Be(Size);
        image.Regions.Select(r => r.Kind).Should().Contain([ImageRegionKind.Data, ImageRegionKind.Zero, ImageRegionKind.Hole]);
        image.Regions.Where(r => r.Kind != ImageRegionKind.Hole).Should().OnlyContain(r => r.Offset % QemuImg.RegionAlignment == 0);

        var map = await QemuImg.MapAsync(image.Path);
        foreach (var hole in image.Regions.Where(r => r.Kind == ImageRegionKind.Hole))
        {
            map.Where(e => e.Start < hole.Offset + hole.Length && hole.Offset < e.Start + e.Length)
                .Should().OnlyContain(e => !e.Data && e.Zero, $"hole at {hole.Offset} must be unallocated");
        }

        var bytes = await File.ReadAllBytesAsync(image.Path);
        var data = image.Regions.First(r => r.Kind == ImageRegionKind.Data);
        bytes.AsSpan((int)data.Offset, (int)data.Length).IndexOfAnyExcept((byte)0).Should().BeGreaterThanOrEqualTo(0);
        var zero = image.Regions.First(r => r.Kind == ImageRegionKind.Zero);
        bytes.AsSpan((int)zero.Offset, (int)zero.Length).IndexOfAnyExcept((byte)0).Should().Be(-1);
    }

    [Fact]
    public async Task Convert_And_Info_Qcow2()
    {
        using var dir = TempDirectory.Create();
        var raw = await QemuImg.WriteRandomImageAsync(dir.Combine("a.raw"), Size, seed: 3);
        var qcow2 = dir.Combine("a.qcow2");

        await QemuImg.ConvertAsync(raw.Path, "raw", qcow2, "qcow2");

        var info = await QemuImg.InfoAsync(qcow2);
        info.Format.Should().Be("qcow2");
        info.VirtualSize.Should().Be(Size);
        (await QemuImg.CompareAsync(raw.Path, qcow2, "raw", "qcow2")).Identical.Should().BeTrue();
    }

    [Fact]
    public async Task Compare_MissingImage_Throws()
    {
        using var dir = TempDirectory.Create();
        await QemuImg.CreateAsync(dir.Combine("a.raw"), "raw", 1024 * 1024);

        var act = () => QemuImg.CompareAsync(dir.Combine("a.raw"), dir.Combine("missing.raw"));

        await act.Should().ThrowAsync<ExternalProcessException>().WithMessage("*could not compare*");
    }
}
