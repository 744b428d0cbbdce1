using System.Security.Authentication;
using System.Text;

namespace ImageioProxy.Tests.Support;

public class V2vLikeClientTests
{
    private const int MiB = 1024 * 1024;

    private static async Task EventuallyAsync(Func<bool> condition, string what)
    {
        // A wait for something that must happen, not a timing assertion: the bound only stops a hung test.
        for (var i = 0; i < 3000 && !condition(); i++)
        {
            await Task.Delay(10);
        }

        condition().Should().BeTrue(what);
    }

    private static byte[] Pattern(int length, byte seed) =>
        [.. Enumerable.Range(0, length).Select(i => (byte)(i * 31 + seed | 1))];

    [Fact]
    public async Task Open_sends_OPTIONS_on_its_own_connection_and_closes_it()
    {
        await using var server = RecordingImageioServer.Start();

        await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl);

        server.Requests.Should().ContainSingle().Which.Head.Should().Be(
            $"OPTIONS /images/ticket-1 HTTP/1.1\r\nHost: 127.0.0.1:{server.Port}\r\nAccept-Encoding: identity\r\n\r\n");
        await EventuallyAsync(() => server.Connections[1].ClosedByClient, "the OPTIONS connection is closed");
        client.ServerOptions.Should().Be(new ImageioServerOptions(true, true, null, 8, 8));
        client.PoolSize.Should().Be(4);
        // Pool connections connect lazily.
        server.Connections.Should().HaveCount(1);
    }

    [Theory]
    [InlineData("{\"features\": [\"flush\", \"zero\"], \"max_readers\": 8, \"max_writers\": 8}", 4)]
    [InlineData("{\"features\": [\"flush\", \"zero\"], \"max_readers\": 2, \"max_writers\": 8}", 2)]
    [InlineData("{\"features\": [\"flush\", \"zero\"], \"max_readers\": 8, \"max_writers\": 3}", 3)]
    [InlineData("{\"features\": [\"flush\", \"zero\"]}", 1)]
    public async Task Pool_size_is_min_of_readers_writers_and_four(string optionsJson, int poolSize)
    {
        await using var server = RecordingImageioServer.Start(new() { OptionsJson = optionsJson });

        await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl);

        client.PoolSize.Should().Be(poolSize);
    }

    [Fact]
    public async Task Open_fails_without_features()
    {
        await using var server = RecordingImageioServer.Start(new() { OptionsJson = "{\"max_readers\": 8, \"max_writers\": 8}" });

        var act = () => V2vLikeClient.OpenAsync(server.ImageUrl);

        await act.Should().ThrowAsync<KeyNotFoundException>();
    }

    [Theory]
    [InlineData(405)]
    [InlineData(204)]
    public async Task Old_server_means_no_flush_no_zero_one_connection(int status)
    {
        await using var server = RecordingImageioServer.Start(new() { InjectStatus = r => r.Method == "OPTIONS" ? status : null });

        await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl);

        client.ServerOptions.Should().Be(new ImageioServerOptions(false, false, null, 1, 1));
        client.PoolSize.Should().Be(1);
    }

    [Fact]
    public async Task Open_fails_on_other_statuses()
    {
        await using var server = RecordingImageioServer.Start(new() { InjectStatus = r => r.Method == "OPTIONS" ? 403 : null });

        var act = () => V2vLikeClient.OpenAsync(server.ImageUrl);

        (await act.Should().ThrowAsync<V2vRequestFailedException>()).Which.Status.Should().Be(403);
    }

    [Theory]
    [InlineData(false, "n")]
    [InlineData(true, "y")]
    public async Task Pwrite_sends_the_plugins_PUT(bool fua, string flush)
    {
        await using var server = RecordingImageioServer.Start();
        await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl);
        var data = Pattern(4096, 7);

        await client.PwriteAsync(138412032 % server.Image.Length, data, fua);

        var put = server.Requests.Should().ContainSingle(r => r.Method == "PUT").Subject;
        var offset = 138412032 % server.Image.Length;
        put.Head.Should().Be(
            $"PUT /images/ticket-1?flush={flush} HTTP/1.1\r\nHost: 127.0.0.1:{server.Port}\r\nAccept-Encoding: identity\r\n"
            + $"Content-Range: bytes {offset}-{offset + 4095}/*\r\nContent-Length: 4096\r\n\r\n");
        put.Body.Should().Equal(data);
        server.Image.AsSpan(offset, 4096).ToArray().Should().Equal(data);
    }

    [Theory]
    [InlineData(false, "false")]
    [InlineData(true, "true")]
    public async Task Zero_sends_the_plugins_PATCH(bool fua, string flush)
    {
        await using var server = RecordingImageioServer.Start();
        await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl);

        await client.ZeroAsync(1048576, 79691776 % server.Image.Length, fua);

        var patch = server.Requests.Should().ContainSingle(r => r.Method == "PATCH").Subject;
        var body = $"{{\"op\": \"zero\", \"offset\": 1048576, \"size\": {79691776 % server.Image.Length}, \"flush\": {flush}}}";
        patch.BodyText.Should().Be(body);
        patch.Head.Should().Be(
            $"PATCH /images/ticket-1 HTTP/1.1\r\nHost: 127.0.0.1:{server.Port}\r\nAccept-Encoding: identity\r\n"
            + $"Content-Type: application/json\r\nContent-Length: {body.Length}\r\n\r\n");
    }

    [Fact]
    public async Task Zero_body_has_the_length_virt_v2v_sends()
    {
        // json.dumps gives 54 bytes plus the digits; virt-v2v-client.md shows a 68-byte PATCH (16 digits).
        await using var server = RecordingImageioServer.Start();
        await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl);

        await client.ZeroAsync(100_000_000 % server.Image.Length, 10_000_000);

        server.Requests.Single(r => r.Method == "PATCH").Header("Content-Length").Should().Be("68");
    }

    [Fact]
    public async Task Zero_without_the_zero_feature_is_a_PUT_of_zeroes()
    {
        await using var server = RecordingImageioServer.Start(new() { OptionsJson = "{\"features\": [\"flush\"], \"max_readers\": 4, \"max_writers\": 4}" });
        await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl);
        server.Image.AsSpan().Fill(0xff);

        await client.ZeroAsync(4096, 300 * 1024);

        var put = server.Requests.Should().ContainSingle(r => r.Method == "PUT").Subject;
        put.Header("Content-Range").Should().Be($"bytes 4096-{4096 + 300 * 1024 - 1}/*");
        put.Body.Should().HaveCount(300 * 1024).And.OnlyContain(b => b == 0);
        server.Image[4095].Should().Be(0xff);
        server.Image[4096 + 300 * 1024].Should().Be(0xff);
    }

    [Fact]
    public async Task Flush_is_sent_on_every_pool_connection_after_requests_in_flight()
    {
        await using var server = RecordingImageioServer.Start();
        await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl);
        var writes = Enumerable.Range(0, 8).Select(i => client.PwriteAsync(i * MiB, Pattern(MiB, (byte)i))).ToList();

        var flush = client.FlushAsync();
        await Task.WhenAll(writes);
        await flush;

        var requests = server.Requests;
        var flushes = requests.Where(r => r.IsFlush).ToList();
        flushes.Should().HaveCount(4);
        flushes.Should().OnlyContain(f => f.BodyText == "{\"op\": \"flush\"}" && f.Header("Content-Type") == "application/json" && f.Header("Content-Length") == "15");
        flushes.Select(f => f.ConnectionId).Should().OnlyHaveUniqueItems().And.NotContain(1, "connection 1 was the OPTIONS one");
        var lastWriteAnswered = requests.Where(r => r.Method == "PUT").Max(r => r.Answered);
        flushes.Should().OnlyContain(f => f.Arrived > lastWriteAnswered, "flush waits for every request in flight");
        // One at a time: each flush is answered before the next one arrives.
        flushes.Zip(flushes.Skip(1)).Should().OnlyContain(p => p.First.Answered < p.Second.Arrived);
        server.Connections.Should().HaveCount(5, "1 OPTIONS connection + 4 pool connections");
        server.MaxConcurrentRequests.Should().BeLessThanOrEqualTo(4);
    }

    [Fact]
    public async Task Pread_sends_a_Range_and_accepts_only_206()
    {
        await using var server = RecordingImageioServer.Start();
        await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl);
        var data = Pattern(2 * MiB, 3);
        await client.PwriteAsync(0, data);
        var buffer = new byte[2 * MiB];

        await client.PreadAsync(0, buffer);

        buffer.Should().Equal(data);
        server.Requests.Single(r => r.Method == "GET").Head.Should().Be(
            $"GET /images/ticket-1 HTTP/1.1\r\nHost: 127.0.0.1:{server.Port}\r\nAccept-Encoding: identity\r\nRange: bytes=0-2097151\r\n\r\n");
    }

    [Fact]
    public async Task Pread_rejects_200()
    {
        await using var server = RecordingImageioServer.Start(new() { InjectStatus = r => r.Method == "GET" ? 200 : null });
        await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl);

        var act = () => client.PreadAsync(0, new byte[10]);

        (await act.Should().ThrowAsync<V2vRequestFailedException>()).WithMessage("could not read sector offset 0 size 10: 200 OK: injected error*");
    }

    [Fact]
    public async Task Errors_fail_the_request_without_retry()
    {
        await using var server = RecordingImageioServer.Start(new() { InjectStatus = r => r.Method == "PUT" ? 500 : null });
        await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl);

        var act = () => client.PwriteAsync(0, new byte[512]);

        (await act.Should().ThrowAsync<V2vRequestFailedException>()).Which.Status.Should().Be(500);
        server.Requests.Count(r => r.Method == "PUT").Should().Be(1);
    }

    [Fact]
    public async Task A_connection_closed_by_the_server_is_reopened_for_the_next_request()
    {
        await using var server = RecordingImageioServer.Start(new()
        {
            OptionsJson = "{\"features\": [\"flush\", \"zero\"], \"max_readers\": 1, \"max_writers\": 1}",
            CloseAfter = r => r.Method == "PUT",
        });
        await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl);

        await client.PwriteAsync(0, new byte[512]);
        await client.PwriteAsync(512, new byte[512]);

        server.Requests.Where(r => r.Method == "PUT").Select(r => r.ConnectionId).Should().Equal(2, 3);
    }

    [Fact]
    public async Task Idle_connections_get_a_flush()
    {
        await using var server = RecordingImageioServer.Start();
        await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl, new() { IdleTimeout = TimeSpan.FromMilliseconds(200) });

        await client.PwriteAsync(0, new byte[512]);

        var putConnection = server.Requests.Single(r => r.Method == "PUT").ConnectionId;
        await EventuallyAsync(() => server.Requests.Any(r => r.IsFlush && r.ConnectionId == putConnection), "the idle connection is flushed");
        // Never-used connections are not flushed (the plugin's last_used is None) and so never opened.
        server.Requests.Where(r => r.IsFlush).Should().OnlyContain(r => r.ConnectionId == putConnection);
    }

    [Fact]
    public async Task A_failed_idle_flush_fails_the_next_request()
    {
        await using var server = RecordingImageioServer.Start(new() { InjectStatus = r => r.IsFlush ? 500 : null });
        await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl, new() { IdleTimeout = TimeSpan.FromMilliseconds(200) });
        await client.PwriteAsync(0, new byte[512]);
        await EventuallyAsync(() => server.Requests.Any(r => r.IsFlush), "the idle connection is flushed");

        var act = async () =>
        {
            // The keeper stores the error just after the response; keep trying until it is raised.
            for (var i = 0; i < 3000; i++)
            {
                await client.PwriteAsync(0, new byte[512]);
                await Task.Delay(10);
            }
        };

        (await act.Should().ThrowAsync<IOException>()).WithMessage("pool keeper failed: could not flush: 500*");
    }

    [Fact]
    public async Task Https_with_a_CA_file_verifies_the_server()
    {
        using var certificate = RecordingImageioServer.CreateCertificate();
        var caFile = Path.GetTempFileName();
        await File.WriteAllTextAsync(caFile, certificate.ExportCertificatePem());
        try
        {
            await using var server = RecordingImageioServer.Start(new() { Certificate = certificate });
            server.ImageUrl.Scheme.Should().Be("https");

            await using (var client = await V2vLikeClient.OpenAsync(server.ImageUrl, new() { CaFile = caFile }))
            {
                await client.PwriteAsync(0, Pattern(1000, 1));
                await client.FlushAsync();
            }

            server.Image.AsSpan(0, 1000).ToArray().Should().Equal(Pattern(1000, 1));

            var untrusted = () => V2vLikeClient.OpenAsync(server.ImageUrl);
            await untrusted.Should().ThrowAsync<AuthenticationException>();

            await using var insecure = await V2vLikeClient.OpenAsync(server.ImageUrl, new() { Insecure = true });
            await insecure.PwriteAsync(0, new byte[10]);
        }
        finally
        {
            File.Delete(caFile);
        }
    }

    [Fact]
    public async Task On_an_ovirt_host_the_pool_uses_the_unix_socket()
    {
        await using var server = RecordingImageioServer.Start(new() { ListenOnUnixSocket = true });
        await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl, new() { IsOvirtHost = true });

        await client.PwriteAsync(0, new byte[512]);
        await client.FlushAsync();

        var requests = server.Requests;
        requests.Single(r => r.Method == "OPTIONS").OverUnixSocket.Should().BeFalse();
        requests.Where(r => r.Method != "OPTIONS").Should().HaveCount(5)
            .And.OnlyContain(r => r.OverUnixSocket && r.Header("Host") == "localhost");
    }

    [Fact]
    public async Task Without_is_ovirt_host_the_unix_socket_is_ignored()
    {
        await using var server = RecordingImageioServer.Start(new() { ListenOnUnixSocket = true });
        await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl);

        await client.PwriteAsync(0, new byte[512]);

        client.ServerOptions.UnixSocket.Should().Be(server.UnixSocketPath);
        server.Requests.Should().OnlyContain(r => !r.OverUnixSocket);
    }

    [Fact]
    public async Task UploadImage_sends_data_as_PUTs_zeroes_as_PATCH_and_ends_with_flushes()
    {
        var image = Path.GetTempFileName();
        try
        {
            // 5 MiB data, 20 MiB hole, 4 MiB written zeroes, 3 MiB + 12345 data: 32 MiB + 12345 bytes.
            var head = Pattern(5 * MiB, 11);
            var tail = Pattern(3 * MiB + 12345, 12);
            await using (var file = File.OpenWrite(image))
            {
                file.Write(head);
                file.Seek(20 * MiB, SeekOrigin.Current);
                file.Write(new byte[4 * MiB]);
                file.Write(tail);
            }

            var expected = await File.ReadAllBytesAsync(image);
            await using var server = RecordingImageioServer.Start(new() { ImageSize = expected.Length });
            server.Image.AsSpan().Fill(0xee);
            await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl, new() { MaxZeroSize = 16 * MiB });

            await client.UploadImageAsync(image);

            server.Image.Should().Equal(expected);
            var requests = server.Requests;
            var puts = requests.Where(r => r.Method == "PUT").ToList();
            var zeros = requests.Where(r => r.IsZero).ToList();
            puts.Should().OnlyContain(r => r.Target == "/images/ticket-1?flush=n" && r.Body.Length <= 4 * MiB && r.Body.Any(b => b != 0));
            puts.Sum(r => (long)r.Body.Length).Should().Be(8 * MiB + 12345);
            // The hole and the written zeroes form one 24 MiB run, split at MaxZeroSize.
            // Requests run in parallel, so their order on the wire may vary.
            zeros.Select(z => z.BodyText).Should().BeEquivalentTo(
                $"{{\"op\": \"zero\", \"offset\": {5 * MiB}, \"size\": {16 * MiB}, \"flush\": false}}",
                $"{{\"op\": \"zero\", \"offset\": {21 * MiB}, \"size\": {8 * MiB}, \"flush\": false}}");
            var flushes = requests.Where(r => r.IsFlush).ToList();
            flushes.Should().HaveCount(4);
            flushes.Select(f => f.ConnectionId).Should().OnlyHaveUniqueItems();
            requests.TakeLast(4).Should().OnlyContain(r => r.IsFlush, "the upload ends with the flushes");
            server.MaxConcurrentRequests.Should().BeLessThanOrEqualTo(4);
            server.Connections.Should().HaveCount(5);
            requests.Should().OnlyContain(r => r.Status == 200);
        }
        finally
        {
            File.Delete(image);
        }
    }

    [Fact]
    public async Task UploadImage_without_qemu_img_detects_zeroes_by_content()
    {
        var image = Path.GetTempFileName();
        try
        {
            var content = new byte[12 * MiB];
            Pattern(MiB, 5).CopyTo(content, 4 * MiB);
            await File.WriteAllBytesAsync(image, content);
            await using var server = RecordingImageioServer.Start(new() { ImageSize = content.Length });
            server.Image.AsSpan().Fill(0xee);
            await using var client = await V2vLikeClient.OpenAsync(server.ImageUrl, new() { UseQemuImgMap = false });

            await client.UploadImageAsync(image);

            server.Image.Should().Equal(content);
            server.Requests.Where(r => r.Method == "PUT").Select(r => r.Header("Content-Range")).Should().Equal($"bytes {4 * MiB}-{8 * MiB - 1}/*");
            server.Requests.Where(r => r.IsZero).Select(r => r.BodyText).Should().BeEquivalentTo(
                $"{{\"op\": \"zero\", \"offset\": 0, \"size\": {4 * MiB}, \"flush\": false}}",
                $"{{\"op\": \"zero\", \"offset\": {8 * MiB}, \"size\": {4 * MiB}, \"flush\": false}}");
        }
        finally
        {
            File.Delete(image);
        }
    }
}
