using System.Net;
using System.Net.Sockets;

namespace NbdClient.Tests;

public class NbdEndpointTests
{
    // expected address: "unix:PATH", "dns:HOST:PORT" or "ip:ADDRESS:PORT" (IPv6 in []).
    [Theory]
    // nbd:// and nbds://
    [InlineData("nbd://localhost/", "dns:localhost:10809", "", false, "localhost")]
    [InlineData("nbd://localhost", "dns:localhost:10809", "", false, "localhost")]
    [InlineData("nbd://example.com:10810/disk", "dns:example.com:10810", "disk", false, "example.com")]
    [InlineData("NBD://example.com:/disk", "dns:example.com:10809", "disk", false, "example.com")]
    [InlineData("nbd://h//disk", "dns:h:10809", "/disk", false, "h")]
    [InlineData("nbd://h/hello%20world", "dns:h:10809", "hello world", false, "h")]
    [InlineData("nbd://h/a/b%2Fc", "dns:h:10809", "a/b/c", false, "h")]
    [InlineData("nbd://h/%C3%A9t%C3%A9", "dns:h:10809", "été", false, "h")]
    [InlineData("nbd://h/sda?x-trace=1", "dns:h:10809", "sda", false, "h")]
    [InlineData("nbd://127.0.0.1:10900/", "ip:127.0.0.1:10900", "", false, "127.0.0.1")]
    [InlineData("nbd://[::1]:10900/e", "ip:[::1]:10900", "e", false, "::1")]
    [InlineData("nbd://[::1]/", "ip:[::1]:10809", "", false, "::1")]
    [InlineData("nbds://server.example:10809/disk", "dns:server.example:10809", "disk", true, "server.example")]
    [InlineData("nbds://127.0.0.1/?tls-hostname=nbd.example", "ip:127.0.0.1:10809", "", true, "nbd.example")]
    [InlineData("nbds://alice@h/disk?tls-certificates=/etc/pki&tls-verify-peer=1", "dns:h:10809", "disk", true, "h")]
    // nbd+unix:// and nbds+unix://
    [InlineData("nbd+unix:///?socket=/tmp/nbd.sock", "unix:/tmp/nbd.sock", "", false, null)]
    [InlineData("nbd+unix:///disk?socket=/tmp/nbd.sock", "unix:/tmp/nbd.sock", "disk", false, null)]
    [InlineData("nbd+unix:///?socket=relative.sock", "unix:relative.sock", "", false, null)]
    [InlineData("nbd+unix:///?socket=/tmp/a%20b%26c.sock", "unix:/tmp/a b&c.sock", "", false, null)]
    [InlineData("nbd+unix:///e?socket=%00abstract", "unix:\0abstract", "e", false, null)]
    [InlineData("nbds+unix://alice@/?socket=/run/s.sock&tls-psk-file=/k.psk", "unix:/run/s.sock", "", true, null)]
    [InlineData("nbds+unix:///?socket=/run/s.sock&tls-hostname=localhost", "unix:/run/s.sock", "", true, "localhost")]
    // imageio ticket URLs
    [InlineData("nbd:unix:/run/vdsm/nbd/t1.sock", "unix:/run/vdsm/nbd/t1.sock", "", false, null)]
    [InlineData("nbd:unix:/run/s.sock:exportname=sda", "unix:/run/s.sock", "sda", false, null)]
    [InlineData("nbd:unix:/run/s.sock:exportname=/leading%20slash", "unix:/run/s.sock", "/leading%20slash", false, null)]
    [InlineData("nbd:unix:/run/s.sock:exportname=", "unix:/run/s.sock", "", false, null)]
    [InlineData("nbd:localhost:10809", "dns:localhost:10809", "", false, "localhost")]
    [InlineData("nbd:127.0.0.1:10810:exportname=disk:1", "ip:127.0.0.1:10810", "disk:1", false, "127.0.0.1")]
    [InlineData("nbd:[::1]:10810:exportname=x", "ip:[::1]:10810", "x", false, "::1")]
    public void Parse_Valid(string uri, string address, string export, bool tls, string? tlsHostname)
    {
        var endpoint = NbdEndpoint.Parse(uri);

        Describe(endpoint.Address).Should().Be(address);
        endpoint.ExportName.Should().Be(export);
        endpoint.RequireTls.Should().Be(tls);
        endpoint.TlsHostname.Should().Be(tlsHostname);
    }

    [Theory]
    [InlineData(null, "empty")]
    [InlineData("", "empty")]
    [InlineData("localhost:10809", "unknown scheme 'localhost'")]
    [InlineData("/tmp/nbd.sock", "no scheme")]
    [InlineData("http://h/disk", "unknown scheme 'http'")]
    [InlineData("nbd+vsock://1:10809/", "vsock")]
    [InlineData("nbds:h/disk", "expected '//'")]
    [InlineData("nbd+unix:?socket=/tmp/s", "expected '//' after 'nbd+unix:'")]
    [InlineData("nbd://", "host is empty")]
    [InlineData("nbd:///disk", "host is empty")]
    [InlineData("nbd://:10809/disk", "host is empty")]
    [InlineData("nbd://h:0/", "invalid port '0'")]
    [InlineData("nbd://h:65536/", "invalid port '65536'")]
    [InlineData("nbd://h:abc/", "invalid port 'abc'")]
    [InlineData("nbd://h:-1/", "invalid port '-1'")]
    [InlineData("nbd://h:+80/", "invalid port '+80'")]
    [InlineData("nbd://::1/", "brackets")]
    [InlineData("nbd://[::1/", "unterminated IPv6")]
    [InlineData("nbd://[1.2.3.4]/", "not an IPv6 address")]
    [InlineData("nbd://[::1]x/", "after the IPv6 address")]
    [InlineData("nbd://1.2.3.256/", "not a valid IPv4 address")]
    [InlineData("nbd://10.1/", "not a valid IPv4 address")]
    [InlineData("nbd://bad_host!/", "not a valid host name")]
    [InlineData("nbd://h/disk?socket=/tmp/s", "only valid with nbd+unix")]
    [InlineData("nbd://h/disk?foo=1", "unknown query parameter 'foo'")]
    [InlineData("nbd://h/disk#frag", "fragment")]
    [InlineData("nbd://h/bad%zz", "bad percent-encoding at '%zz'")]
    [InlineData("nbd://h/bad%2", "bad percent-encoding")]
    [InlineData("nbd://h/%C3%28", "not valid UTF-8")]
    [InlineData("nbd://h/a%00b", "NUL")]
    [InlineData("nbd://h/a b", "whitespace")]
    [InlineData("nbd://h/a\tb", "control characters")]
    [InlineData("nbd+unix:///disk", "needs the socket path")]
    [InlineData("nbd+unix:///?socket=", "socket path is empty")]
    [InlineData("nbd+unix:///?socket=/a&socket=/b", "given twice")]
    [InlineData("nbd+unix://localhost/?socket=/tmp/s", "takes no host")]
    [InlineData("nbds+unix:///?socket=/tmp/s&tls-hostname=", "tls-hostname= is empty")]
    [InlineData("nbd:unix:relative.sock", "absolute socket path")]
    [InlineData("nbd:unix:/run/s.sock:garbage", "only ':exportname=NAME' may follow")]
    [InlineData("nbd:unix:/run/s.sock?x=1", "not allowed in imageio")]
    [InlineData("nbd:", "nothing after 'nbd:'")]
    [InlineData("nbd:localhost", "port is required")]
    [InlineData("nbd:localhost:exportname=x", "port is required")]
    [InlineData("nbd:localhost:99999", "invalid port '99999'")]
    public void Parse_Invalid_SaysWhy(string? uri, string reason)
    {
        NbdEndpoint.TryParse(uri, out var endpoint, out var error).Should().BeFalse();
        endpoint.Should().BeNull();
        error.Should().StartWith("invalid NBD URI").And.Contain(reason);

        var act = () => NbdEndpoint.Parse(uri!);
        act.Should().Throw<FormatException>().WithMessage($"*{reason}*");
    }

    [Fact]
    public void Parse_SocketPathTooLong_Fails()
    {
        var uri = $"nbd+unix:///?socket=/{new string('s', 120)}";
        NbdEndpoint.TryParse(uri, out _, out var error).Should().BeFalse();
        error.Should().Contain("too long (121 bytes");
    }

    [Fact]
    public void Parse_ExportNameTooLong_Fails()
    {
        NbdEndpoint.TryParse($"nbd://h/{new string('e', 4097)}", out _, out var error).Should().BeFalse();
        error.Should().Contain("4097 bytes");
        NbdEndpoint.Parse($"nbd://h/{new string('e', 4096)}").ExportName.Should().HaveLength(4096);
    }

    [Fact]
    public void Error_DoesNotEchoTheTlsUserName()
    {
        NbdEndpoint.TryParse("nbds://alice@h:bad/", out _, out var error).Should().BeFalse();
        error.Should().NotContain("alice").And.Contain("nbds://h:bad/");
    }

    [Theory]
    [InlineData("nbd://localhost/", "nbd://localhost:10809/")]
    [InlineData("nbds://alice@h:10810//disk", "nbds://h:10810//disk")]
    [InlineData("nbd://h/hello%20world?x-a=1", "nbd://h:10809/hello%20world")]
    [InlineData("nbd://127.0.0.1/e", "nbd://127.0.0.1:10809/e")]
    [InlineData("nbds://[::1]:10900/?tls-hostname=localhost", "nbds://[::1]:10900/?tls-hostname=localhost")]
    [InlineData("nbd+unix:///?socket=/tmp/nbd.sock", "nbd+unix:///?socket=/tmp/nbd.sock")]
    [InlineData("nbds+unix://bob@/a%3Fb?socket=/tmp/a%26b.sock&tls-certificates=/x", "nbds+unix:///a%3Fb?socket=/tmp/a%26b.sock")]
    [InlineData("nbd+unix:///?socket=%00abstract", "nbd+unix:///?socket=%00abstract")]
    [InlineData("nbd+unix:///?socket=/s&tls-hostname=h.example", "nbd+unix:///?socket=/s&tls-hostname=h.example")]
    [InlineData("nbd:unix:/run/s.sock:exportname=a b", "nbd+unix:///a%20b?socket=/run/s.sock")]
    [InlineData("nbd:h:10811", "nbd://h:10811/")]
    public void ToString_IsCanonical_AndRoundTrips(string uri, string expected)
    {
        var endpoint = NbdEndpoint.Parse(uri);

        endpoint.ToString().Should().Be(expected);
        NbdEndpoint.Parse(endpoint.ToString()).Should().Be(endpoint);
    }

    [Fact]
    public void ToString_OfAConstructedEndpoint_EscapesAndRoundTrips()
    {
        var endpoint = new NbdEndpoint(new UnixDomainSocketEndPoint("/tmp/we ird?#&.sock"), "ex/port?%", RequireTls: true);

        endpoint.ToString().Should().Be("nbds+unix:///ex/port%3F%25?socket=/tmp/we%20ird%3F%23%26.sock");
        NbdEndpoint.Parse(endpoint.ToString()).Should().Be(endpoint);
    }

    private static string Describe(EndPoint address) => address switch
    {
        UnixDomainSocketEndPoint unix => "unix:" + (unix.ToString().StartsWith('@') && unix.Serialize()[2] == 0 ? "\0" + unix.ToString()[1..] : unix.ToString()),
        DnsEndPoint dns => $"dns:{dns.Host}:{dns.Port}",
        IPEndPoint { AddressFamily: AddressFamily.InterNetworkV6 } ip => $"ip:[{ip.Address}]:{ip.Port}",
        IPEndPoint ip => $"ip:{ip.Address}:{ip.Port}",
        _ => address.GetType().Name,
    };
}
