using ImageioProxy.Observability;

namespace ImageioProxy.Tests.Observability;

public class TicketIdRedactionTests
{
    [Theory]
    [InlineData("/images/3f1c9a", "/images/{ticket_id}")]
    [InlineData("/images/3f1c9a/extents?context=zero", "/images/{ticket_id}/extents?context=zero")]
    [InlineData("/images/3f1c9a/checksum/algorithms", "/images/{ticket_id}/checksum/algorithms")]
    [InlineData("http://host:54322/images/3f1c9a?flush=n", "http://host:54322/images/{ticket_id}?flush=n")]
    [InlineData("PUT /tickets/3f1c9a", "PUT /tickets/{ticket_id}")]
    [InlineData("/IMAGES/3f1c9a", "/IMAGES/{ticket_id}")]
    [InlineData("a /images/x and /tickets/y", "a /images/{ticket_id} and /tickets/{ticket_id}")]
    public void Redact_replaces_the_id_segment(string text, string expected)
        => TicketIdRedaction.Redact(text).Should().Be(expected);

    [Theory]
    [InlineData("/info/")]
    [InlineData("/images/")]
    [InlineData("/tickets/")]
    [InlineData("")]
    [InlineData("GET")]
    public void Redact_leaves_text_without_an_id_alone(string text)
        => TicketIdRedaction.Redact(text).Should().Be(text);

    [Fact]
    public void Redact_activity_rewrites_the_display_name_and_string_tags()
    {
        using var activity = new System.Diagnostics.Activity("test");
        activity.DisplayName = "PUT /images/secret-id";
        activity.SetTag("url.path", "/images/secret-id/extents");
        activity.SetTag("url.full", "https://h/images/secret-id?flush=y");
        activity.SetTag("http.response.status_code", 200);

        TicketIdRedaction.Redact(activity);

        activity.DisplayName.Should().Be("PUT /images/{ticket_id}");
        activity.GetTagItem("url.path").Should().Be("/images/{ticket_id}/extents");
        activity.GetTagItem("url.full").Should().Be("https://h/images/{ticket_id}?flush=y");
        activity.GetTagItem("http.response.status_code").Should().Be(200);
    }
}
