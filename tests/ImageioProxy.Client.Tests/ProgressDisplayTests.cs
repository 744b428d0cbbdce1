using System.Text.Json;

namespace ImageioProxy.Client.Tests;

public class ProgressDisplayTests
{
    [Fact]
    public void JsonLine_HasImageioFields()
    {
        var progress = new TransferProgress();
        progress.SetSize(1000);
        progress.Add(250);
        progress.SetPhase("uploading image");

        using var json = JsonDocument.Parse(ProgressDisplay.JsonLine(progress));

        json.RootElement.GetProperty("transferred").GetInt64().Should().Be(250);
        json.RootElement.GetProperty("size").GetInt64().Should().Be(1000);
        json.RootElement.GetProperty("description").GetString().Should().Be("uploading image");
        json.RootElement.GetProperty("elapsed").GetDouble().Should().BeGreaterThanOrEqualTo(0);
    }

    [Fact]
    public void Bar_ShowsPercentBytesRateAndEta()
    {
        var line = ProgressDisplay.Bar("uploading image", 512L << 20, 1L << 30, 256L << 20);

        line.Should().StartWith("uploading image [############............]  50% 512.00 MiB / 1.00 GiB, 256.00 MiB/s, ETA 00:00:02");
    }

    [Fact]
    public void Bar_WithoutRate_HasNoEta()
    {
        ProgressDisplay.Bar("downloading image", 0, 100, 0).Should().EndWith("ETA --:--:--");
    }

    [Theory]
    [InlineData(0, "0 bytes")]
    [InlineData(1023, "1023 bytes")]
    [InlineData(1536, "1.50 KiB")]
    [InlineData(6L << 30, "6.00 GiB")]
    public void FormatBytes_UsesBinaryUnits(long bytes, string expected)
    {
        ProgressDisplay.FormatBytes(bytes).Should().Be(expected);
    }

    [Fact]
    public async Task Text_NotOnATerminal_PrintsPhasesAndTheSummaryOnly()
    {
        var progress = new TransferProgress();
        using var output = new StringWriter();
        await using (var display = ProgressDisplay.Start(progress, ProgressOutput.Text, output, isTerminal: false))
        {
            progress.SetSize(100);
            progress.SetPhase("uploading image");
            progress.Add(100);
            await display.CompleteAsync(succeeded: true);
        }

        var lines = output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        lines.Should().HaveCount(2);
        lines[0].Should().Be("uploading image");
        lines[1].Should().MatchRegex(@"^\[ 100% \] 100 bytes, \d+\.\d\d s, .+/s$");
        output.ToString().Should().NotContain("\r");
    }

    [Fact]
    public async Task Text_OnATerminal_RedrawsTheBarInPlace()
    {
        var progress = new TransferProgress();
        using var output = new StringWriter();
        await using (var display = ProgressDisplay.Start(progress, ProgressOutput.Text, output, isTerminal: true, TimeSpan.FromMilliseconds(1)))
        {
            progress.SetSize(100);
            progress.Add(40);
            // A phase change draws at once, whatever the timer does.
            progress.SetPhase("uploading image");
            await display.CompleteAsync(succeeded: false);
        }

        var text = output.ToString();
        text.Should().StartWith("\r").And.Contain("\ruploading image [#########...............]  40% 40 bytes / 100 bytes")
            .And.EndWith(Environment.NewLine);
    }

    [Fact]
    public async Task Json_WritesOneObjectPerLine_EndingWithTheFinalState()
    {
        var progress = new TransferProgress();
        using var output = new StringWriter();
        await using (var display = ProgressDisplay.Start(progress, ProgressOutput.Json, output, isTerminal: false))
        {
            progress.SetSize(10);
            progress.SetPhase("downloading image");
            progress.Add(10);
            progress.SetPhase("download completed");
            await display.CompleteAsync(succeeded: true);
        }

        var lines = output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        lines.Should().HaveCountGreaterThanOrEqualTo(3);
        var documents = lines.Select(l => JsonDocument.Parse(l)).ToList();
        documents[0].RootElement.GetProperty("description").GetString().Should().Be("downloading image");
        documents[^1].RootElement.GetProperty("transferred").GetInt64().Should().Be(10);
        documents[^1].RootElement.GetProperty("description").GetString().Should().Be("download completed");
    }
}
