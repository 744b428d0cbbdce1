using ImageioProxy.Http;

namespace ImageioProxy.Tests.Http;

public class HttpRangesTests
{
    // Error texts for inputs imageio also rejects were produced by running ovirt-imageio 0eb617c's
    // http.Range.parse / http.ContentRange.parse with python 3.11; the others are ours.

    public static TheoryData<string, long?, long?, long?> ValidRanges => new()
    {
        { "bytes=0-0", 0, 0, null },
        { "bytes=0-99", 0, 99, null },
        { "bytes=5-5", 5, 5, null },
        { "bytes=1048576-2097151", 1048576, 2097151, null },
        { "bytes=0-", 0, null, null },
        { "bytes=4096-", 4096, null, null },
        { "bytes=-1", null, null, 1 },
        { "bytes=-512", null, null, 512 },
        { "bytes=007-010", 7, 10, null },
        { "bytes=0-9223372036854775807", 0, long.MaxValue, null },
        { "bytes=9223372036854775807-", long.MaxValue, null, null },
        { "bytes=9223372036854775807-9223372036854775807", long.MaxValue, long.MaxValue, null },
        { "bytes=-9223372036854775807", null, null, long.MaxValue },
        // Leading zeros do not count towards overflow (python's int() agrees).
        { "bytes=000000000000000000000000000001-000000000000000000000000000002", 1, 2, null },
    };

    [Theory]
    [MemberData(nameof(ValidRanges))]
    public void TryParseRange_accepts_valid_values(string header, long? first, long? last, long? suffix)
    {
        HttpRanges.TryParseRange(header, out var range, out var error).Should().BeTrue(error);

        range.Should().Be(new RangeRequest(first, last, suffix));
        range.IsSuffix.Should().Be(suffix is not null);
        error.Should().BeEmpty();
    }

    public static TheoryData<string, string> InvalidRanges => new()
    {
        // Same text as imageio.
        { "bytes=1-2,3-4", "Cannot satisfy range 'bytes=1-2,3-4', invalid range or multiple ranges" },
        { "bytes=0-1, 5-6", "Cannot satisfy range 'bytes=0-1, 5-6', invalid range or multiple ranges" },
        { "bytes=-", "Cannot satisfy range 'bytes=-', no first or last" },
        { "bytes=5-1", "Cannot satisfy range 'bytes=5-1', first > last" },
        { "bytes=9223372036854775807-0", "Cannot satisfy range 'bytes=9223372036854775807-0', first > last" },
        { "", "Cannot satisfy range '', invalid range or multiple ranges" },
        { "bytes=", "Cannot satisfy range 'bytes=', invalid range or multiple ranges" },
        { "bytes", "Cannot satisfy range 'bytes', invalid range or multiple ranges" },
        { "bytes=0", "Cannot satisfy range 'bytes=0', invalid range or multiple ranges" },
        { "Bytes=0-1", "Cannot satisfy range 'Bytes=0-1', invalid range or multiple ranges" },
        { "BYTES=0-1", "Cannot satisfy range 'BYTES=0-1', invalid range or multiple ranges" },
        { "bytes = 0-1", "Cannot satisfy range 'bytes = 0-1', invalid range or multiple ranges" },
        { " bytes=0-1", "Cannot satisfy range ' bytes=0-1', invalid range or multiple ranges" },
        { "bytes=0-1 ", "Cannot satisfy range 'bytes=0-1 ', invalid range or multiple ranges" },
        { "bytes= 0-1", "Cannot satisfy range 'bytes= 0-1', invalid range or multiple ranges" },
        { "bytes=0 -1", "Cannot satisfy range 'bytes=0 -1', invalid range or multiple ranges" },
        { "bytes=0- 1", "Cannot satisfy range 'bytes=0- 1', invalid range or multiple ranges" },
        { "bytes=-1-2", "Cannot satisfy range 'bytes=-1-2', invalid range or multiple ranges" },
        { "bytes=--1", "Cannot satisfy range 'bytes=--1', invalid range or multiple ranges" },
        { "bytes=+1-2", "Cannot satisfy range 'bytes=+1-2', invalid range or multiple ranges" },
        { "bytes=1-+2", "Cannot satisfy range 'bytes=1-+2', invalid range or multiple ranges" },
        { "bytes=0x10-0x20", "Cannot satisfy range 'bytes=0x10-0x20', invalid range or multiple ranges" },
        { "bytes=1.0-2", "Cannot satisfy range 'bytes=1.0-2', invalid range or multiple ranges" },
        { "bytes=1_000-2", "Cannot satisfy range 'bytes=1_000-2', invalid range or multiple ranges" },
        { "bytes=0-1;", "Cannot satisfy range 'bytes=0-1;', invalid range or multiple ranges" },
        { "bytes=0-1,", "Cannot satisfy range 'bytes=0-1,', invalid range or multiple ranges" },
        { "items=0-1", "Cannot satisfy range 'items=0-1', invalid range or multiple ranges" },
        { "bytes 0-1", "Cannot satisfy range 'bytes 0-1', invalid range or multiple ranges" },
        { "bytes=0-1\t", "Cannot satisfy range 'bytes=0-1\\t', invalid range or multiple ranges" },
        { "b'x", "Cannot satisfy range \"b'x\", invalid range or multiple ranges" },
        // Python's "$" matches before a final newline and imageio accepts this; we do not.
        { "bytes=0-9\n", "Cannot satisfy range 'bytes=0-9\\n', invalid range or multiple ranges" },
        // Python's \d matches any Unicode digit and imageio accepts these; .NET's \d would too. We do not.
        { "bytes=\u0660-\u0669", "Cannot satisfy range 'bytes=\u0660-\u0669', invalid range or multiple ranges" },
        { "bytes=0-\u0669", "Cannot satisfy range 'bytes=0-\u0669', invalid range or multiple ranges" },
        { "bytes=\uff11-\uff12", "Cannot satisfy range 'bytes=\uff11-\uff12', invalid range or multiple ranges" },
        { "bytes=-\u0967", "Cannot satisfy range 'bytes=-\u0967', invalid range or multiple ranges" },
        // Ours: suffix of zero is unsatisfiable (RFC 9110 14.1.1); imageio turns it into "from 0".
        { "bytes=-0", "Cannot satisfy range 'bytes=-0', suffix length is zero" },
        { "bytes=-000", "Cannot satisfy range 'bytes=-000', suffix length is zero" },
        // Ours: numbers beyond Int64.
        { "bytes=9223372036854775808-", "Cannot satisfy range 'bytes=9223372036854775808-', value too large" },
        { "bytes=0-9223372036854775808", "Cannot satisfy range 'bytes=0-9223372036854775808', value too large" },
        { "bytes=-9223372036854775808", "Cannot satisfy range 'bytes=-9223372036854775808', value too large" },
        { "bytes=18446744073709551616-18446744073709551617", "Cannot satisfy range 'bytes=18446744073709551616-18446744073709551617', value too large" },
        { "bytes=0-123456789012345678901234567890", "Cannot satisfy range 'bytes=0-123456789012345678901234567890', value too large" },
    };

    [Theory]
    [MemberData(nameof(InvalidRanges))]
    public void TryParseRange_rejects_invalid_values_with_imageio_text(string header, string expectedError)
    {
        HttpRanges.TryParseRange(header, out var range, out var error).Should().BeFalse();

        error.Should().Be(expectedError);
        range.Should().Be(default(RangeRequest));
    }

    [Fact]
    public void TryParseRange_rejects_a_huge_value_without_throwing()
    {
        var header = "bytes=0-" + new string('9', 100_000);

        HttpRanges.TryParseRange(header, out _, out var error).Should().BeFalse();

        error.Should().EndWith(", value too large");
    }

    [Theory]
    [InlineData("bytes=0-99")]
    [InlineData("bytes=7-")]
    [InlineData("bytes=-42")]
    public void RangeRequest_header_value_round_trips(string header)
    {
        HttpRanges.TryParseRange(header, out var range, out _).Should().BeTrue();

        range.ToHeaderValue().Should().Be(header);
    }

    public static TheoryData<string, long, long?, long?> ValidContentRanges => new()
    {
        { "bytes 0-0/1", 0, 0, 1 },
        { "bytes 0-4095/*", 0, 4095, null },
        { "bytes 138412032-142606335/*", 138412032, 142606335, null },
        { "bytes 0-99/100", 0, 99, 100 },
        { "bytes 5-5/6", 5, 5, 6 },
        { "bytes 100-*/*", 100, null, null },
        { "bytes 100-*/200", 100, null, 200 },
        // imageio only checks last >= complete, so first beyond complete with last = * passes.
        { "bytes 300-*/200", 300, null, 200 },
        { "bytes 007-010/*", 7, 10, null },
        { "bytes 0-9223372036854775806/9223372036854775807", 0, long.MaxValue - 1, long.MaxValue },
        { "bytes 9223372036854775807-9223372036854775807/*", long.MaxValue, long.MaxValue, null },
    };

    [Theory]
    [MemberData(nameof(ValidContentRanges))]
    public void TryParseContentRange_accepts_valid_values(string header, long first, long? last, long? complete)
    {
        HttpRanges.TryParseContentRange(header, out var range, out var error).Should().BeTrue(error);

        range.Should().Be(new ContentRange(first, last, complete));
        error.Should().BeEmpty();
    }

    public static TheoryData<string, string> InvalidContentRanges => new()
    {
        // Same text as imageio.
        { "bytes 5-1/10", "Invalid Content-Range 'bytes 5-1/10', first > last" },
        { "bytes 0-10/10", "Invalid Content-Range 'bytes 0-10/10', last >= complete" },
        { "bytes 0-10/0", "Invalid Content-Range 'bytes 0-10/0', last >= complete" },
        { "", "Invalid Content-Range ''" },
        { "x", "Invalid Content-Range 'x'" },
        { "bytes", "Invalid Content-Range 'bytes'" },
        { "bytes ", "Invalid Content-Range 'bytes '" },
        { "bytes 0-1", "Invalid Content-Range 'bytes 0-1'" },
        { "bytes 0-1/", "Invalid Content-Range 'bytes 0-1/'" },
        { "bytes */100", "Invalid Content-Range 'bytes */100'" },
        { "bytes *-*/*", "Invalid Content-Range 'bytes *-*/*'" },
        { "bytes -1-2/*", "Invalid Content-Range 'bytes -1-2/*'" },
        { "bytes 0--1/*", "Invalid Content-Range 'bytes 0--1/*'" },
        { "bytes 0-1/-1", "Invalid Content-Range 'bytes 0-1/-1'" },
        { "bytes +0-1/*", "Invalid Content-Range 'bytes +0-1/*'" },
        { "bytes=0-1/*", "Invalid Content-Range 'bytes=0-1/*'" },
        { "Bytes 0-1/*", "Invalid Content-Range 'Bytes 0-1/*'" },
        { "BYTES 0-1/*", "Invalid Content-Range 'BYTES 0-1/*'" },
        { "bytes  0-1/*", "Invalid Content-Range 'bytes  0-1/*'" },
        { " bytes 0-1/*", "Invalid Content-Range ' bytes 0-1/*'" },
        { "bytes 0-1/* ", "Invalid Content-Range 'bytes 0-1/* '" },
        { "bytes 0 -1/*", "Invalid Content-Range 'bytes 0 -1/*'" },
        { "bytes 0-1 /*", "Invalid Content-Range 'bytes 0-1 /*'" },
        { "bytes 0-1/ 2", "Invalid Content-Range 'bytes 0-1/ 2'" },
        { "bytes 0-1/2,bytes 3-4/5", "Invalid Content-Range 'bytes 0-1/2,bytes 3-4/5'" },
        { "bytes 0-1/**", "Invalid Content-Range 'bytes 0-1/**'" },
        { "bytes 0x0-0x1/*", "Invalid Content-Range 'bytes 0x0-0x1/*'" },
        // Python's "$" accepts a final newline; we do not.
        { "bytes 0-1/*\n", "Invalid Content-Range 'bytes 0-1/*\\n'" },
        // Non-ASCII digits: imageio accepts them, we do not.
        { "bytes \u0660-\u0669/*", "Invalid Content-Range 'bytes \u0660-\u0669/*'" },
        { "bytes 0-1/\u0669\u0669", "Invalid Content-Range 'bytes 0-1/\u0669\u0669'" },
        // Ours: numbers beyond Int64.
        { "bytes 9223372036854775808-*/*", "Invalid Content-Range 'bytes 9223372036854775808-*/*', value too large" },
        { "bytes 0-9223372036854775808/*", "Invalid Content-Range 'bytes 0-9223372036854775808/*', value too large" },
        { "bytes 0-1/9223372036854775808", "Invalid Content-Range 'bytes 0-1/9223372036854775808', value too large" },
        { "bytes 0-1/18446744073709551616", "Invalid Content-Range 'bytes 0-1/18446744073709551616', value too large" },
        { "bytes 123456789012345678901234567890-*/*", "Invalid Content-Range 'bytes 123456789012345678901234567890-*/*', value too large" },
    };

    [Theory]
    [MemberData(nameof(InvalidContentRanges))]
    public void TryParseContentRange_rejects_invalid_values_with_imageio_text(string header, string expectedError)
    {
        HttpRanges.TryParseContentRange(header, out var range, out var error).Should().BeFalse();

        error.Should().Be(expectedError);
        range.Should().Be(default(ContentRange));
    }

    [Theory]
    [InlineData("bytes 0-4095/*")]
    [InlineData("bytes 9-*/*")]
    [InlineData("bytes 0-9/10")]
    [InlineData("bytes 3-*/10")]
    public void ContentRange_header_value_round_trips(string header)
    {
        HttpRanges.TryParseContentRange(header, out var range, out _).Should().BeTrue();

        range.ToHeaderValue().Should().Be(header);
    }

    public static TheoryData<string, string> PythonReprCases => new()
    {
        { "abc", "'abc'" },
        { "", "''" },
        { "it's", "\"it's\"" },
        { "a'b\"c", "'a\\'b\"c'" },
        { "a\"b", "'a\"b'" },
        { "back\\slash", "'back\\\\slash'" },
        { "\r\n\t", "'\\r\\n\\t'" },
        { "\0\u001b\u007f", "'\\x00\\x1b\\x7f'" },
        { "\u00a0\u00e9", "'\\xa0\u00e9'" },
        { "\u200b\u2028", "'\\u200b\\u2028'" },
        { "\u0660\U0001F600", "'\u0660\U0001F600'" },
    };

    // Expected values are python 3.11's repr() of the same strings.
    [Theory]
    [MemberData(nameof(PythonReprCases))]
    public void PythonRepr_quotes_like_python(string text, string expected)
    {
        HttpRanges.PythonRepr(text).Should().Be(expected);
    }

    // A lone surrogate cannot go through theory data (xunit serialises it as UTF-8 and it becomes U+FFFD).
    [Fact]
    public void PythonRepr_escapes_a_lone_surrogate_like_python()
    {
        HttpRanges.PythonRepr("a\ud800b").Should().Be("'a\\ud800b'");
    }
}
