using System.Buffers;
using System.IO.Pipelines;
using System.Text;
using ImageioProxy.Hosting;

namespace ImageioProxy.Tests.Hosting;

/// <summary>The reader that makes Kestrel count spliced bytes as read (BodySplicing).</summary>
public sealed class BodySplicingTests
{
    [Fact]
    public async Task Skipped_bytes_come_first_as_placeholders_then_reads_pass_through()
    {
        var pipe = new Pipe();
        var reader = new SkippingPipeReader(pipe.Reader);
        await pipe.Writer.WriteAsync(Encoding.ASCII.GetBytes("next request"));

        reader.Skip(3 * 1024 * 1024 + 5);
        long skipped = 0;
        while (true)
        {
            var result = await reader.ReadAsync();
            if (!result.Buffer.ToArray().All(b => b == 0))
            {
                Encoding.ASCII.GetString(result.Buffer.ToArray()).Should().Be("next request", "real bytes follow the placeholders, untouched");
                break;
            }
            result.Buffer.Length.Should().BeLessThanOrEqualTo(1024 * 1024, "placeholders come from one shared 1 MiB array");
            // Consume part of what was returned, as Kestrel's body reader may.
            var part = Math.Min(result.Buffer.Length, 700_000);
            reader.AdvanceTo(result.Buffer.GetPosition(part));
            skipped += part;
        }

        skipped.Should().Be(3 * 1024 * 1024 + 5);
    }

    [Fact]
    public async Task Without_skipped_bytes_the_reader_is_the_transport_itself()
    {
        var pipe = new Pipe();
        var reader = new SkippingPipeReader(pipe.Reader);
        await pipe.Writer.WriteAsync(Encoding.ASCII.GetBytes("abcdef"));

        reader.TryRead(out var result).Should().BeTrue();
        Encoding.ASCII.GetString(result.Buffer.ToArray()).Should().Be("abcdef");
        reader.AdvanceTo(result.Buffer.GetPosition(2), result.Buffer.End);
        await pipe.Writer.WriteAsync(Encoding.ASCII.GetBytes("g"));
        result = await reader.ReadAsync();

        Encoding.ASCII.GetString(result.Buffer.ToArray()).Should().Be("cdefg", "consumed and examined positions reach the transport");
        reader.AdvanceTo(result.Buffer.End);
        reader.Complete();
    }
}
