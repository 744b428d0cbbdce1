using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using ImageioProxy.Tests.Support;

namespace ImageioProxy.Tests.Control;

/// <summary>The control socket: PUT/GET/PATCH/DELETE /tickets (imageio-api.md §4).</summary>
public class ControlApiTests(ProxyFixture fixture) : IClassFixture<ProxyFixture>
{
    private async Task<(int Status, string Body)> PutTicketAsync(string path, string json)
    {
        using var response = await fixture.Control.PutAsync(path, new StringContent(json, Encoding.UTF8, "application/json"));
        return ((int)response.StatusCode, await response.Content.ReadAsStringAsync());
    }

    private async Task<JsonElement> StatusAsync(string id)
    {
        using var document = JsonDocument.Parse(await fixture.Control.GetStringAsync($"/tickets/{id}"));
        return document.RootElement.Clone();
    }

    [Fact]
    public async Task Put_stores_the_ticket_under_its_uuid_and_get_reports_the_status()
    {
        var ticket = fixture.Ticket(["write"], t => { t["filename"] = "disk.img"; t["sparse"] = true; t["inactivity_timeout"] = 3600; });
        var id = (string)ticket["uuid"]!;

        var (status, body) = await PutTicketAsync("/tickets/some-other-path-id", JsonSerializer.Serialize(ticket));
        var info = await StatusAsync(id);

        status.Should().Be(200);
        body.Should().BeEmpty();
        info.GetProperty("uuid").GetString().Should().Be(id);
        info.GetProperty("active").GetBoolean().Should().BeFalse();
        info.GetProperty("canceled").GetBoolean().Should().BeFalse();
        info.GetProperty("connections").GetInt32().Should().Be(0);
        info.GetProperty("idle_time").GetInt64().Should().BeGreaterThanOrEqualTo(0);
        info.GetProperty("inactivity_timeout").GetInt64().Should().Be(3600);
        info.GetProperty("ops").EnumerateArray().Select(o => o.GetString()).Should().Equal("write");
        info.GetProperty("size").GetInt64().Should().Be(fixture.ImageSize);
        info.GetProperty("sparse").GetBoolean().Should().BeTrue();
        info.GetProperty("dirty").GetBoolean().Should().BeFalse();
        info.GetProperty("timeout").GetInt64().Should().Be(300);
        info.GetProperty("url").GetString().Should().Be(fixture.NbdUrl);
        info.GetProperty("transfer_id").GetString().Should().Be((string)ticket["transfer_id"]!);
        info.GetProperty("filename").GetString().Should().Be("disk.img");
        info.GetProperty("transferred").GetInt64().Should().Be(0);
        info.GetProperty("expires").GetInt64().Should().BeCloseTo(DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 300, 60);
        (await fixture.CurlAsync($"{fixture.RemoteUri}images/{id}", "-X", "OPTIONS")).Status.Should().Be(200);
    }

    [Fact]
    public async Task Read_write_ticket_has_no_transferred_and_counts_its_connections()
    {
        var id = await fixture.AddTicketAsync(["read", "write"]);
        await using var http = await RawHttp.ConnectAsync(fixture.RemoteUri);
        await http.SendAsync($"OPTIONS /images/{id} HTTP/1.1\nHost: test\n\n");
        (await http.ReadResponseAsync()).Status.Should().Be(200);

        var info = await StatusAsync(id);

        info.TryGetProperty("transferred", out _).Should().BeFalse();
        info.GetProperty("connections").GetInt32().Should().Be(1);
    }

    [Theory]
    [InlineData("{\"uuid\": \"a\"}", "Invalid ticket: Required ticket parameter is missing: size")]
    [InlineData("{\"uuid\": \"a\", \"size\": -1, \"ops\": [\"read\"], \"timeout\": 1, \"url\": \"nbd:unix:/x\"}", "Invalid ticket: Invalid value for 'size': -1: must be >= 0")]
    [InlineData("{\"uuid\": \"a\", \"size\": true, \"ops\": [\"read\"], \"timeout\": 1, \"url\": \"nbd:unix:/x\"}", "Invalid ticket: Invalid value for 'size': True: expecting a <class 'int'> value")]
    [InlineData("{\"uuid\": \"a\", \"size\": 1, \"ops\": [\"read\"], \"timeout\": \"1\", \"url\": \"nbd:unix:/x\"}", "Invalid ticket: Invalid value for 'timeout': '1': expecting a <class 'int'> value")]
    [InlineData("{\"uuid\": \"a\", \"size\": 1, \"ops\": [\"read\"], \"timeout\": 1, \"url\": \"ftp://x\"}", "Invalid ticket: Invalid value for 'url': 'ftp://x': Unsupported url scheme: ftp")]
    [InlineData("{\"uuid\": \"a\", \"size\": 1, \"ops\": [\"delete\"], \"timeout\": 1, \"url\": \"nbd:unix:/x\"}", "Invalid ticket: Invalid value for 'ops'")]
    [InlineData("{\"uuid\": \"a\", \"size\": 1, \"ops\": [\"read\"], \"timeout\": 1, \"url\": \"nbd:unix:/x\", \"sparse\": 1}", "Invalid ticket: Invalid value for 'sparse': 1: expecting a <class 'bool'> value")]
    [InlineData("[1]", "Invalid ticket: Invalid ticket: [1], expecting a dict")]
    [InlineData("{oops", "Ticket is not in a json format:")]
    public async Task Put_invalid_ticket_is_400_with_the_reason(string json, string expected)
    {
        var (status, body) = await PutTicketAsync("/tickets/a", json);

        status.Should().Be(400);
        body.Should().StartWith(expected);
        body.Should().EndWith("\n");
    }

    [Fact]
    public async Task Get_and_patch_of_unknown_ticket_are_404_and_empty_id_is_400()
    {
        using var get = await fixture.Control.GetAsync("/tickets/unknown");
        using var patch = await fixture.Control.PatchAsJsonAsync("/tickets/unknown", new { timeout = 10 });
        using var empty = await fixture.Control.GetAsync("/tickets/");

        get.StatusCode.Should().Be(HttpStatusCode.NotFound);
        (await get.Content.ReadAsStringAsync()).Should().Be("No such ticket 'unknown'\n");
        patch.StatusCode.Should().Be(HttpStatusCode.NotFound);
        (await patch.Content.ReadAsStringAsync()).Should().Be("No such ticket: unknown\n");
        empty.StatusCode.Should().Be(HttpStatusCode.BadRequest);
    }

    [Fact]
    public async Task Patch_extends_the_expiry_and_revives_an_expired_ticket()
    {
        var id = await fixture.AddTicketAsync(changes: t => t["timeout"] = 0);
        (await fixture.CurlAsync("-X", "OPTIONS", fixture.ImageUrl(id))).Status.Should().Be(403);

        using var patch = await fixture.Control.PatchAsJsonAsync($"/tickets/{id}", new { timeout = 3000 });
        var info = await StatusAsync(id);

        patch.StatusCode.Should().Be(HttpStatusCode.OK);
        info.GetProperty("expires").GetInt64().Should().BeCloseTo(DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 3000, 60);
        info.GetProperty("timeout").GetInt64().Should().Be(0, "extend does not change the ticket's timeout");
        (await fixture.CurlAsync("-X", "OPTIONS", fixture.ImageUrl(id))).Status.Should().Be(200);
    }

    [Theory]
    [InlineData("{}", "Missing required value for 'timeout'\n")]
    [InlineData("{\"timeout\": \"1\"}", "Integer required '1'\n")]
    [InlineData("{\"timeout\": -1}", "Invalid value -1 < 0\n")]
    public async Task Patch_with_a_bad_timeout_is_400(string json, string expected)
    {
        var id = await fixture.AddTicketAsync();

        using var patch = await fixture.Control.PatchAsync($"/tickets/{id}", new StringContent(json));

        patch.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        (await patch.Content.ReadAsStringAsync()).Should().Be(expected);
    }

    [Fact]
    public async Task Delete_is_204_idempotent_and_the_ticket_is_then_refused()
    {
        var id = await fixture.AddTicketAsync();
        (await fixture.CurlAsync("-X", "OPTIONS", fixture.ImageUrl(id))).Status.Should().Be(200);

        using var first = await fixture.Control.DeleteAsync($"/tickets/{id}");
        using var second = await fixture.Control.DeleteAsync($"/tickets/{id}");
        using var get = await fixture.Control.GetAsync($"/tickets/{id}");
        var options = await fixture.CurlAsync("-X", "OPTIONS", fixture.ImageUrl(id));

        first.StatusCode.Should().Be(HttpStatusCode.NoContent);
        second.StatusCode.Should().Be(HttpStatusCode.NoContent);
        get.StatusCode.Should().Be(HttpStatusCode.NotFound);
        options.Status.Should().Be(403);
    }

    [Fact]
    public async Task Delete_of_a_ticket_still_busy_after_the_remove_timeout_is_409()
    {
        var id = await fixture.AddTicketAsync(changes: t => t["transfer_id"] = "busy-transfer");
        // An operation that ignores cancellation (the fixture's remove timeout is 2 s).
        var operation = fixture.Server.Tickets.Find(id)!.BeginOperation(0);
        try
        {
            using var delete = await fixture.Control.DeleteAsync($"/tickets/{id}");

            delete.StatusCode.Should().Be(HttpStatusCode.Conflict);
            (await delete.Content.ReadAsStringAsync()).Should().Be("Timeout cancelling transfer busy-transfer\n");
            (await StatusAsync(id)).GetProperty("canceled").GetBoolean().Should().BeTrue();
        }
        finally
        {
            operation.Dispose();
        }
        using var retry = await fixture.Control.DeleteAsync($"/tickets/{id}");
        retry.StatusCode.Should().Be(HttpStatusCode.NoContent);
    }

    [Fact]
    public async Task Delete_all_removes_every_ticket()
    {
        var first = await fixture.AddTicketAsync();
        var second = await fixture.AddTicketAsync();

        using var delete = await fixture.Control.DeleteAsync("/tickets/");

        delete.StatusCode.Should().Be(HttpStatusCode.NoContent);
        fixture.Server.Tickets.Find(first).Should().BeNull();
        fixture.Server.Tickets.Find(second).Should().BeNull();
    }

    [Fact]
    public async Task Images_routes_are_not_served_on_the_control_socket_and_other_methods_are_405()
    {
        var id = await fixture.AddTicketAsync();

        using var images = await fixture.Control.GetAsync($"/images/{id}");
        using var post = await fixture.Control.PostAsync($"/tickets/{id}", new StringContent("{}"));

        images.StatusCode.Should().Be(HttpStatusCode.NotFound);
        (await images.Content.ReadAsStringAsync()).Should().Be($"No handler for '/images/{id}'\n");
        post.StatusCode.Should().Be(HttpStatusCode.MethodNotAllowed);
    }

    [Fact]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public void Control_socket_is_mode_0660()
    {
        var mode = File.GetUnixFileMode(fixture.ControlSocket);

        mode.Should().Be(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite);
    }
}
