using System.Text;
using System.Text.Json;
using ImageioProxy.Tests.Support;

namespace ImageioProxy.Tests.Security;

/// <summary>Every malformed or hostile request we could think of, sent over a raw socket to a live
/// server: each gets its 4xx (never a 5xx, never a hang), the image is byte-for-byte untouched, and
/// the ticket's connections and in-flight buffers are back to zero afterwards. Statuses and texts come
/// from imageio-api.md §2 and §3.9 and ecosystem.md §5.2; the ones Kestrel answers itself (framing,
/// sizes) are its documented status for the fault.</summary>
public class MalformedRequestTests(SmallImageFixture fixture) : IClassFixture<SmallImageFixture>
{
    private const long Size = SmallImageFixture.Size;
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(30);

    /// <summary>A request with CRLF line ends; "{id}" becomes the test's ticket id.</summary>
    private static string Request(string method, string target, string[]? headers = null, string body = "", bool contentLength = true)
    {
        var text = new StringBuilder($"{method} {target} HTTP/1.1\r\nHost: test\r\n");
        foreach (var header in headers ?? [])
        {
            text.Append(header).Append("\r\n");
        }
        if (contentLength && body.Length > 0)
        {
            text.Append("Content-Length: ").Append(Encoding.Latin1.GetByteCount(body)).Append("\r\n");
        }
        return text.Append("\r\n").Append(body).ToString();
    }

    private static string Put(string body, params string[] headers) => Request("PUT", "/images/{id}", headers, body);

    private static string Patch(string json) => Request("PATCH", "/images/{id}", ["Content-Type: application/json"], json);

    private static string Get(string target, params string[] headers) => Request("GET", target, headers);

    private static string Chunked(string target, string chunks) => Request("PUT", target, ["Transfer-Encoding: chunked"], chunks, contentLength: false);

    /// <summary>name, request, expected status, expected start of the body (null: any).</summary>
    public static TheoryData<string, string, int, string?> Cases()
    {
        const string InvalidRange = "Invalid Content-Range";
        const string OutOfRange = "Requested range out of allowed range";
        const string CannotSatisfy = "Cannot satisfy range";
        var data = new TheoryData<string, string, int, string?>
        {
            // Content-Range of PUT: only "bytes A-B/C" with A <= B < C, numbers below 2^63.
            { "content-range 2^64-1", Put("abc", "Content-Range: bytes 18446744073709551615-18446744073709551615/*"), 400, InvalidRange },
            { "content-range 2^64", Put("abc", "Content-Range: bytes 18446744073709551616-18446744073709551618/*"), 400, InvalidRange },
            { "content-range 2^63", Put("abc", "Content-Range: bytes 9223372036854775808-9223372036854775810/*"), 400, InvalidRange },
            { "content-range 2^63-1", Put("abc", "Content-Range: bytes 9223372036854775807-9223372036854775807/*"), 416, OutOfRange },
            { "content-range last 2^63", Put("abc", "Content-Range: bytes 0-9223372036854775808/*"), 400, InvalidRange },
            { "content-range negative", Put("abc", "Content-Range: bytes -1-2/*"), 400, InvalidRange },
            { "content-range fractional", Put("abc", "Content-Range: bytes 1.5-3/*"), 400, InvalidRange },
            { "content-range last >= complete", Put("abc", "Content-Range: bytes 0-2/2"), 400, InvalidRange },
            { "content-range unsatisfied form", Put("abc", $"Content-Range: bytes */{Size}"), 400, InvalidRange },
            { "content-range first > last", Put("abc", "Content-Range: bytes 5-2/*"), 400, InvalidRange },
            { "content-range with =", Put("abc", "Content-Range: bytes=0-2/*"), 400, InvalidRange },
            { "content-range empty", Put("abc", "Content-Range: "), 400, InvalidRange },
            { "content-range twice", Put("abc", "Content-Range: bytes 0-2/*", "Content-Range: bytes 5-7/*"), 400, InvalidRange },
            { "content-range trailing newline", Put("abc", "Content-Range: bytes 0-2/*\u000b"), 400, InvalidRange },
            { "content-range at the end", Put("abc", $"Content-Range: bytes {Size}-{Size + 2}/*"), 416, OutOfRange },
            { "content-range across the end", Put("abc", $"Content-Range: bytes {Size - 2}-{Size}/*"), 416, OutOfRange },
            { "content-range unicode digits", Put("abc", "Content-Range: bytes \u0661-\u0663/*"), 400, null },

            // Content-Length: digits only, below 2^63, one value.
            { "content-length negative", Request("PUT", "/images/{id}", ["Content-Length: -1"], "abc", contentLength: false), 400, null },
            { "content-length fractional", Request("PUT", "/images/{id}", ["Content-Length: 1.5"], "abc", contentLength: false), 400, null },
            { "content-length 2^64", Request("PUT", "/images/{id}", ["Content-Length: 18446744073709551616"], "abc", contentLength: false), 400, null },
            { "content-length 2^63", Request("PUT", "/images/{id}", ["Content-Length: 9223372036854775808"], "abc", contentLength: false), 400, null },
            { "content-length 2^63-1", Request("PUT", "/images/{id}", ["Content-Length: 9223372036854775807"], "abc", contentLength: false), 416, OutOfRange },
            { "content-length beyond the ticket", Request("PUT", "/images/{id}", [$"Content-Length: {Size + 1}"], "abc", contentLength: false), 416, OutOfRange },
            { "content-length not a number", Request("PUT", "/images/{id}", ["Content-Length: abc"], "abc", contentLength: false), 400, null },
            { "content-length twice, different", Request("PUT", "/images/{id}", ["Content-Length: 3", "Content-Length: 4"], "abcd", contentLength: false), 400, null },
            { "content-length and chunked", Request("PUT", "/images/{id}", ["Content-Length: 3", "Transfer-Encoding: chunked"], "zz\r\n", contentLength: false), 400, null },
            { "transfer-encoding not ending in chunked", Request("PUT", "/images/{id}", ["Transfer-Encoding: gzip"], "abc", contentLength: false), 400, null },
            { "put without length", Request("PUT", "/images/{id}", [], "", contentLength: false), 400, "Content-Length header is required" },

            // Chunked bodies Kestrel cannot decode: the body read fails with 400, not a 500.
            { "chunked size not hex", Chunked("/images/{id}", "zz\r\nabc\r\n0\r\n\r\n"), 400, null },
            { "chunked size overflows", Chunked("/images/{id}", "FFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n"), 400, null },
            { "chunked data without CRLF", Chunked("/images/{id}", "3\r\nabcXY3\r\nabc\r\n0\r\n\r\n"), 400, null },
            { "chunked size negative", Chunked("/images/{id}", "-3\r\nabc\r\n0\r\n\r\n"), 400, null },
            { "chunked patch not hex", Request("PATCH", "/images/{id}", ["Transfer-Encoding: chunked"], "q\r\n{}\r\n0\r\n\r\n", contentLength: false), 400, null },

            // Range of GET: one "bytes=A-B", "bytes=A-" or "bytes=-N" inside the image.
            { "range 2^64-1", Get("/images/{id}", "Range: bytes=0-18446744073709551615"), 416, CannotSatisfy },
            { "range 2^63-1 open", Get("/images/{id}", "Range: bytes=9223372036854775807-"), 416, null },
            { "range 2^63-1 last", Get("/images/{id}", "Range: bytes=0-9223372036854775807"), 416, OutOfRange },
            { "range huge suffix", Get("/images/{id}", "Range: bytes=-99999999999999999999"), 416, CannotSatisfy },
            { "range letters", Get("/images/{id}", "Range: bytes=a-b"), 416, CannotSatisfy },
            { "range fractional", Get("/images/{id}", "Range: bytes=1.5-2"), 416, CannotSatisfy },
            { "range negative", Get("/images/{id}", "Range: bytes=-1-2"), 416, CannotSatisfy },
            { "range other unit", Get("/images/{id}", "Range: items=0-1"), 416, CannotSatisfy },
            { "range first > last", Get("/images/{id}", "Range: bytes=5-1"), 416, CannotSatisfy },
            { "range multiple", Get("/images/{id}", "Range: bytes=0-1,2-3"), 416, CannotSatisfy },
            { "range at the end", Get("/images/{id}", $"Range: bytes={Size}-"), 416, null },
            { "range empty suffix", Get("/images/{id}", "Range: bytes=-0"), 416, CannotSatisfy },
            { "range empty", Get("/images/{id}", "Range: bytes="), 416, CannotSatisfy },

            // PATCH JSON: an object, known op, strict types, offsets inside the image.
            { "patch array", Patch("[]"), 400, "Invalid JSON message: expecting an object" },
            { "patch string", Patch("\"zero\""), 400, "Invalid JSON message: expecting an object" },
            { "patch null", Patch("null"), 400, "Invalid JSON message: expecting an object" },
            { "patch number", Patch("42"), 400, "Invalid JSON message: expecting an object" },
            { "patch empty body", Request("PATCH", "/images/{id}", ["Content-Length: 0"], "", contentLength: false), 400, "Invalid JSON message" },
            { "patch not json", Patch("{op: zero}"), 400, "Invalid JSON message" },
            { "patch trailing garbage", Patch("{\"op\": \"flush\"} x"), 400, "Invalid JSON message" },
            { "patch invalid utf-8", Patch("{\"op\": \"\u00ff\u00fe\"}"), 400, "Invalid JSON message" },
            { "patch deep nesting", Patch(new string('[', 2000) + new string(']', 2000)), 400, "Invalid JSON message" },
            { "patch too large", Patch("{\"op\": \"flush\", \"x\": \"" + new string('x', 70 * 1024) + "\"}"), 413, "Request body too large" },
            { "patch op number", Patch("{\"op\": 1}"), 400, "Unsupported value '1' for 'op'" },
            { "patch op null", Patch("{\"op\": null}"), 400, "Unsupported value" },
            { "patch unknown op", Patch("{\"op\": \"trim\", \"size\": 1}"), 400, "Unsupported value 'trim' for 'op'" },
            { "patch no op", Patch("{\"size\": 1}"), 400, "Missing required value for op" },
            { "patch size exponent", Patch("{\"op\": \"zero\", \"size\": 1e3}"), 400, "Integer required 1e3" },
            { "patch size fractional", Patch("{\"op\": \"zero\", \"size\": 1.0}"), 400, "Integer required 1.0" },
            { "patch size 2^63", Patch("{\"op\": \"zero\", \"size\": 9223372036854775808}"), 400, "Integer required" },
            { "patch size 2^64", Patch("{\"op\": \"zero\", \"size\": 18446744073709551616}"), 400, "Integer required" },
            { "patch size negative", Patch("{\"op\": \"zero\", \"size\": -1}"), 400, "Invalid value -1 < 0" },
            { "patch size string", Patch("{\"op\": \"zero\", \"size\": \"1\"}"), 400, "Integer required '1'" },
            { "patch size null", Patch("{\"op\": \"zero\", \"size\": null}"), 400, "Integer required None" },
            { "patch size object", Patch("{\"op\": \"zero\", \"size\": {}}"), 400, "Integer required" },
            { "patch offset negative", Patch("{\"op\": \"zero\", \"size\": 1, \"offset\": -5}"), 400, "Invalid value -5 < 0" },
            { "patch offset 2^63-1", Patch("{\"op\": \"zero\", \"size\": 1, \"offset\": 9223372036854775807}"), 416, OutOfRange },
            { "patch size 2^63-1", Patch("{\"op\": \"zero\", \"size\": 9223372036854775807, \"offset\": 1}"), 416, OutOfRange },
            { "patch offset at the end", Patch($"{{\"op\": \"zero\", \"size\": 1, \"offset\": {Size}}}"), 416, OutOfRange },
            { "patch flush not boolean", Patch("{\"op\": \"zero\", \"size\": 1, \"flush\": \"y\"}"), 400, "Boolean required 'y'" },

            // Query strings.
            { "put flush=yes", Request("PUT", "/images/{id}?flush=yes", [], "abc"), 400, "Unsupported value 'yes' for 'flush'" },
            { "extents start negative", Get("/images/{id}/extents?start=-1"), 400, "Invalid value for 'start'" },
            { "extents start 2^64", Get("/images/{id}/extents?start=18446744073709551616"), 400, "Invalid value for 'start'" },
            { "extents length fractional", Get("/images/{id}/extents?length=1.5"), 400, "Invalid value for 'length'" },
            { "extents past the end", Get($"/images/{{id}}/extents?start={Size}&length=1"), 416, OutOfRange },
            { "extents length 2^63-1", Get("/images/{id}/extents?start=1&length=9223372036854775807"), 416, OutOfRange },
            { "extents unknown context", Get("/images/{id}/extents?context=nope"), 400, "Unsupported value 'nope' for 'context'" },
            { "checksum block size fractional", Get("/images/{id}/checksum?block_size=1.5"), 400, "Invalid block size" },
            { "checksum block size 2^64", Get("/images/{id}/checksum?block_size=18446744073709551616"), 400, "Invalid block size" },
            { "checksum block size too small", Get("/images/{id}/checksum?block_size=4096"), 400, "Block size out of allowed range" },
            { "checksum unknown algorithm", Get("/images/{id}/checksum?algorithm=md4"), 400, "Unsupported value 'md4' for 'algorithm'" },

            // Request line and headers (Kestrel's limits: 414 and 431).
            { "request line too long", Get("/images/{id}?x=" + new string('a', 9000)), 414, null },
            { "header too large", Get("/images/{id}", "X-Big: " + new string('b', 40 * 1024)), 431, null },
            { "too many headers", Get("/images/{id}", [.. Enumerable.Range(0, 150).Select(i => $"X-H{i}: {i}")]), 431, null },
            { "nul in a header", Get("/images/{id}", "X-Nul: a\0b"), 400, null },
            { "space in a header name", Get("/images/{id}", "Bad Header: x"), 400, null },
            { "folded header", Get("/images/{id}", "X-Folded: a", " b"), 400, null },
            { "no host", "GET /images/{id} HTTP/1.1\r\n\r\n", 400, null },
            { "two hosts", "GET /images/{id} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, null },
            { "double space in request line", "GET  /images/{id} HTTP/1.1\r\nHost: test\r\n\r\n", 400, null },
            { "no leading slash", "GET images/{id} HTTP/1.1\r\nHost: test\r\n\r\n", 400, null },
            { "tls hello on plain http", "\u0016\u0003\u0001\u0002\u0000\u0001\u0000\u0001\u00fc\u0003\u0003", 400, null },
            { "binary garbage", "\u0000\u0001\u0002\u00ff\r\n\r\n", 400, null },

            // Path tricks: dot segments are removed before routing, encoded slashes stay in the id.
            { "dot segments to the control api", Get("/images/../tickets/{id}"), 404, "No handler for '/tickets/" },
            { "encoded dot segments", Get("/images/%2e%2e/tickets/{id}"), 404, "No handler for '/tickets/" },
            { "dot segment to an empty id", Get("/images/{id}/.."), 400, "Ticket id is required" },
            { "encoded slash", Get("/images/{id}%2Fextents"), 403, "You are not allowed to access this resource: No such ticket" },
            { "encoded nul", Get("/images/{id}%00"), 400, null },
            { "invalid utf-8 escape", Get("/images/%ff%fe"), 403, null },
            { "backslashes", Get("/images/{id}\\..\\..\\tickets"), 403, null },
            { "double slash", Get("/images//{id}"), 404, null },
            { "very long ticket id", Get("/images/" + new string('t', 6000)), 403, "You are not allowed to access this resource: No such ticket" },
            { "asterisk target", "OPTIONS * HTTP/1.1\r\nHost: test\r\n\r\n", 404, null },

            // The control API does not exist on data listeners (imageio-api.md §1).
            { "control put on data port", Request("PUT", "/tickets/{id}", ["Content-Type: application/json"], "{\"uuid\": \"{id}\", \"size\": 1, \"ops\": [\"write\"], \"timeout\": 1, \"url\": \"nbd:unix:/x\"}"), 404, "No handler for '/tickets/" },
            { "control get on data port", Get("/tickets/{id}"), 404, "No handler for '/tickets/" },
            { "control patch on data port", Request("PATCH", "/tickets/{id}", [], "{\"timeout\": 0}"), 404, "No handler for '/tickets/" },
            { "control delete on data port", Request("DELETE", "/tickets/{id}"), 404, "No handler for '/tickets/" },
            { "control delete all on data port", Request("DELETE", "/tickets/"), 404, "No handler for '/tickets/'" },

            // Methods.
            { "delete image", Request("DELETE", "/images/{id}"), 405, "Method 'DELETE' not defined" },
            { "trace", Request("TRACE", "/images/{id}"), 405, null },
            { "unknown method", Request("FOO", "/images/{id}"), 405, "Invalid method 'FOO'" },
            { "lower-case method", Request("put", "/images/{id}", [], "abc"), 405, "Invalid method 'put'" },
            { "connect", Request("CONNECT", "/images/{id}"), 405, "Invalid method 'CONNECT'" },
            { "post extents", Request("POST", "/images/{id}/extents", [], "{}"), 405, null },
        };
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Is_refused_with_a_4xx_and_changes_nothing(string name, string request, int status, string? body)
    {
        await AssertRefusedAsync(RawExchange.Tcp(fixture.RemoteUri), name, request, status, body);
    }

    /// <summary>A sample of the same on the local unix socket, which shares the handlers but not the listener.</summary>
    [Theory]
    [InlineData("PUT /tickets/{id} HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\n{}", 404)]
    [InlineData("DELETE /tickets/{id} HTTP/1.1\r\nHost: test\r\n\r\n", 404)]
    [InlineData("PUT /images/{id} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400)]
    [InlineData("PUT /images/{id} HTTP/1.1\r\nHost: test\r\nContent-Range: bytes 18446744073709551615-18446744073709551615/*\r\nContent-Length: 1\r\n\r\nx", 400)]
    public async Task Is_refused_on_the_local_socket_too(string request, int status)
    {
        await AssertRefusedAsync(RawExchange.Unix(fixture.LocalSocket), request, request, status, null);
    }

    private async Task AssertRefusedAsync(System.Net.EndPoint server, string name, string request, int status, string? body)
    {
        var id = await fixture.AddTicketAsync(changes: t => t["inactivity_timeout"] = 300);
        var tickets = fixture.Server.Tickets.Count;
        var before = await fixture.ImageHashAsync();

        var reply = await RawExchange.SendAsync(server, request.Replace("{id}", id, StringComparison.Ordinal), Limit);

        reply.Status.Should().Be(status, $"{name}: got {reply}");
        if (body is not null)
        {
            reply.Body.Should().StartWith(body, name);
        }
        if (reply.Header("content-length") is not "0" and not null && reply.Header("content-type") is { } type)
        {
            type.Should().StartWith("text/plain", $"{name}: errors are plain text");
        }
        (await fixture.ImageHashAsync()).Should().Be(before, $"{name} must not change the image");
        fixture.Server.Tickets.Count.Should().Be(tickets, $"{name} must not add or remove tickets");
        var ticket = fixture.Server.Tickets.Find(id);
        ticket.Should().NotBeNull($"{name} must not remove the ticket");
        ticket!.IsCanceled.Should().BeFalse();
        ticket.IsExpired.Should().BeFalse($"{name} must not change the ticket's expiry");
        await fixture.AssertQuiescentAsync(id);
        fixture.Server.Tickets.GlobalBudget.InUse.Should().Be(0);
        await fixture.RemoveTicketAsync(id);
    }

    [Fact]
    public async Task Valid_requests_still_work_after_the_refused_ones()
    {
        // The control case: the same harness accepts a well-formed PUT and GET, so the refusals above
        // are about the input, not about a broken setup.
        var id = await fixture.AddTicketAsync();
        var before = await fixture.ImageHashAsync();

        var put = await RawExchange.SendAsync(RawExchange.Tcp(fixture.RemoteUri), Put("abc", "Content-Range: bytes 10-12/*").Replace("{id}", id, StringComparison.Ordinal), Limit);
        var get = await RawExchange.SendAsync(RawExchange.Tcp(fixture.RemoteUri), Get("/images/{id}", "Range: bytes=10-12").Replace("{id}", id, StringComparison.Ordinal), Limit);

        put.Status.Should().Be(200, put.ToString());
        get.Status.Should().Be(206, get.ToString());
        get.Body.Should().Be("abc");
        (await fixture.ImageHashAsync()).Should().NotBe(before);
        await fixture.AssertQuiescentAsync(id);
    }

    /// <summary>Invalid tickets on the control socket: 400 with imageio's reason, and no ticket installed.</summary>
    public static TheoryData<string, string, string> InvalidTickets() => new()
    {
        { "null", "null", "Invalid ticket: Invalid ticket: None, expecting a dict" },
        { "string", "\"ticket\"", "Invalid ticket: Invalid ticket: 'ticket', expecting a dict" },
        { "number", "42", "Invalid ticket: Invalid ticket: 42, expecting a dict" },
        { "empty", "", "Ticket is not in a json format:" },
        { "truncated", "{\"uuid\": \"x\", ", "Ticket is not in a json format:" },
        { "invalid utf-8", "{\"uuid\": \"\u00ff\"}", "Ticket is not in a json format:" },
        { "deep nesting", new string('[', 2000) + new string(']', 2000), "Ticket is not in a json format:" },
        { "uuid number", Ticket("\"uuid\": 1"), "Invalid ticket: Invalid value for 'uuid': 1: expecting a <class 'str'> value" },
        { "uuid empty", Ticket("\"uuid\": \"\""), "Invalid ticket: Invalid value for 'uuid': '': must not be empty" },
        { "size fractional", Ticket("\"size\": 1.5"), "Invalid ticket: Invalid value for 'size': 1.5: expecting a <class 'int'> value" },
        { "size 2^63", Ticket("\"size\": 9223372036854775808"), "Invalid ticket: Invalid value for 'size'" },
        { "size 2^64", Ticket("\"size\": 18446744073709551616"), "Invalid ticket: Invalid value for 'size'" },
        { "size exponent", Ticket("\"size\": 1e400"), "Invalid ticket: Invalid value for 'size'" },
        { "size string", Ticket("\"size\": \"1\""), "Invalid ticket: Invalid value for 'size': '1'" },
        { "size negative", Ticket("\"size\": -1"), "Invalid ticket: Invalid value for 'size': -1: must be >= 0" },
        { "ops not a list", Ticket("\"ops\": \"read\""), "Invalid ticket: Invalid value for 'ops'" },
        { "ops numbers", Ticket("\"ops\": [1]"), "Invalid ticket: Invalid value for 'ops'" },
        { "ops unknown", Ticket("\"ops\": [\"delete\"]"), "Invalid ticket: Invalid value for 'ops'" },
        { "timeout negative", Ticket("\"timeout\": -1"), "Invalid ticket: Invalid value for 'timeout': -1: must be >= 0" },
        { "timeout boolean", Ticket("\"timeout\": true"), "Invalid ticket: Invalid value for 'timeout': True" },
        { "inactivity timeout string", Ticket("\"inactivity_timeout\": \"x\""), "Invalid ticket: Invalid value for 'inactivity_timeout'" },
        { "url file", Ticket("\"url\": \"file:///etc/passwd\""), "Invalid ticket: Invalid value for 'url'" },
        { "url http", Ticket("\"url\": \"http://example.com/x\""), "Invalid ticket: Invalid value for 'url'" },
        { "url empty", Ticket("\"url\": \"\""), "Invalid ticket: Invalid value for 'url'" },
        { "url number", Ticket("\"url\": 5"), "Invalid ticket: Invalid value for 'url'" },
        { "transfer id number", Ticket("\"transfer_id\": 5"), "Invalid ticket: Invalid value for 'transfer_id'" },
        { "filename list", Ticket("\"filename\": []"), "Invalid ticket: Invalid value for 'filename'" },
        { "sparse string", Ticket("\"sparse\": \"yes\""), "Invalid ticket: Invalid value for 'sparse'" },
        { "dirty number", Ticket("\"dirty\": 0"), "Invalid ticket: Invalid value for 'dirty'" },
    };

    /// <summary>A valid ticket JSON with one field replaced.</summary>
    private static string Ticket(string field)
    {
        var fields = new Dictionary<string, string>
        {
            ["uuid"] = "\"uuid\": \"invalid-ticket-uuid\"",
            ["size"] = "\"size\": 1024",
            ["ops"] = "\"ops\": [\"read\"]",
            ["timeout"] = "\"timeout\": 60",
            ["url"] = "\"url\": \"nbd:unix:/tmp/none.sock\"",
        };
        var key = field[1..field.IndexOf('"', 1)];
        fields[key] = field;
        return "{" + string.Join(", ", fields.Values) + "}";
    }

    [Theory]
    [MemberData(nameof(InvalidTickets))]
    public async Task Invalid_ticket_on_the_control_socket_is_400_and_installs_nothing(string name, string json, string expected)
    {
        var tickets = fixture.Server.Tickets.Count;
        var body = Encoding.Latin1.GetBytes(json);
        var request = $"PUT /tickets/invalid-ticket-uuid HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {body.Length}\r\n\r\n";

        var reply = await RawExchange.SendAsync(RawExchange.Unix(fixture.ControlSocket), [.. Encoding.ASCII.GetBytes(request), .. body], Limit);

        reply.Status.Should().Be(400, $"{name}: got {reply}");
        reply.Body.Should().StartWith(expected, name);
        fixture.Server.Tickets.Count.Should().Be(tickets);
        fixture.Server.Tickets.Find("invalid-ticket-uuid").Should().BeNull();
    }

    [Theory]
    [InlineData("[1]", "Invalid patch: expecting an object")]
    [InlineData("{\"timeout\": 1.5}", "Integer required 1.5")]
    [InlineData("{\"timeout\": 9223372036854775808}", "Integer required")]
    [InlineData("{\"timeout\": null}", "Integer required None")]
    [InlineData("{timeout: 1}", "Invalid patch:")]
    public async Task Invalid_patch_on_the_control_socket_is_400_and_keeps_the_expiry(string json, string expected)
    {
        var id = await fixture.AddTicketAsync();
        var before = await StatusAsync(id);

        var reply = await RawExchange.SendAsync(RawExchange.Unix(fixture.ControlSocket),
            $"PATCH /tickets/{id} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {json.Length}\r\n\r\n{json}", Limit);

        reply.Status.Should().Be(400, reply.ToString());
        reply.Body.Should().StartWith(expected);
        (await StatusAsync(id)).GetProperty("expires").GetInt64().Should().BeCloseTo(before.GetProperty("expires").GetInt64(), 5);
    }

    [Fact]
    public async Task Oversized_ticket_on_the_control_socket_is_413()
    {
        var json = "{\"uuid\": \"big\", \"x\": \"" + new string('x', 2 * 1024 * 1024) + "\"}";

        var reply = await RawExchange.SendAsync(RawExchange.Unix(fixture.ControlSocket),
            $"PUT /tickets/big HTTP/1.1\r\nHost: localhost\r\nContent-Length: {json.Length}\r\n\r\n{json}", Limit);

        reply.Status.Should().Be(413, reply.ToString());
        fixture.Server.Tickets.Find("big").Should().BeNull();
    }

    private async Task<JsonElement> StatusAsync(string id)
    {
        using var document = JsonDocument.Parse(await fixture.Control.GetStringAsync($"/tickets/{id}"));
        return document.RootElement.Clone();
    }
}
