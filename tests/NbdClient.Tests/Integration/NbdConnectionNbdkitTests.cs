using TestSupport;

namespace NbdClient.Tests.Integration;

/// <summary>NbdConnection against nbdkit 1.32 and its filters, for what qemu-nbd cannot be made to do
/// (recipes from nbd-fault-injection.md).</summary>
public class NbdConnectionNbdkitTests
{
    [Fact]
    public async Task WriteErrors_FailOnlyThatRequest_WithTheErrno()
    {
        // §1: ENOSPC on every write and zero, EIO on every read; flush works.
        await using var server = await NbdkitServer.StartAsync(["memory", "64M", "error=ENOSPC", "error-pwrite-rate=100%", "error-zero-rate=100%", "error-pread=EIO", "error-pread-rate=100%"],
            new NbdkitOptions { Filters = ["error"] });
        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server));

        var write = (await FluentActions.Awaiting(() => connection.WriteAsync(0, new byte[4096]).AsTask()).Should().ThrowAsync<NbdCommandException>()).Which;
        write.Error.Should().Be(NbdErrorCode.ENOSPC);
        write.Command.Should().Be(NbdCommand.Write);
        var zero = (await FluentActions.Awaiting(() => connection.WriteZeroesAsync(0, 4096).AsTask()).Should().ThrowAsync<NbdCommandException>()).Which;
        zero.Error.Should().Be(NbdErrorCode.ENOSPC);
        var read = (await FluentActions.Awaiting(() => connection.ReadAsync(0, new byte[4096]).AsTask()).Should().ThrowAsync<NbdCommandException>()).Which;
        read.Error.Should().Be(NbdErrorCode.EIO, "read errors arrive as an ERROR chunk");
        await connection.FlushAsync();
        connection.IsClosed.Should().BeFalse();
    }

    [Fact]
    public async Task DelayedRead_CompletesAfterALaterWrite_OnTheSameConnection()
    {
        // §3: replies out of order; each completes its own caller.
        await using var server = await NbdkitServer.StartAsync(["memory", "64M", "delay-read=2"], new NbdkitOptions { Filters = ["delay"] });
        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server));
        var data = Endpoints.RandomBytes(4096, 7);
        await connection.WriteAsync(0, data);

        var buffer = new byte[4096];
        var read = connection.ReadAsync(0, buffer).AsTask();
        await connection.WriteAsync(8192, data).AsTask().WaitAsync(Endpoints.Bound);
        read.IsCompleted.Should().BeFalse("the write's reply overtook the delayed read");
        await read.WaitAsync(Endpoints.Bound);
        buffer.Should().Equal(data);
    }

    [Fact]
    public async Task HungServer_FailsTheConnection_AfterTheRequestTimeout()
    {
        // §4: a paused server never answers; the protocol has no cancel, so the connection is abandoned.
        await using var server = await NbdkitServer.StartAsync(["memory", "64M"], new NbdkitOptions { Filters = ["pause"] });
        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server), new NbdClientOptions { RequestTimeout = TimeSpan.FromSeconds(1) });
        await server.PauseAsync();
        try
        {
            var write = connection.WriteAsync(0, new byte[4096]).AsTask();
            var read = connection.ReadAsync(0, new byte[4096]).AsTask();
            var writeFailure = (await FluentActions.Awaiting(() => write.WaitAsync(Endpoints.Bound)).Should().ThrowAsync<NbdOutcomeUnknownException>()).Which;
            writeFailure.InnerException.Should().BeOfType<NbdConnectionException>().Which.Reason.Should().Be(NbdConnectionFailure.RequestTimeout);
            var readFailure = (await FluentActions.Awaiting(() => read.WaitAsync(Endpoints.Bound)).Should().ThrowAsync<NbdConnectionException>()).Which;
            readFailure.Reason.Should().Be(NbdConnectionFailure.RequestTimeout);
            connection.IsClosed.Should().BeTrue();
        }
        finally
        {
            await server.ResumeAsync();
        }
    }

    [Fact]
    public async Task NoZeroFilter_MakesWriteZeroesARefusal()
    {
        // §6
        await using var server = await NbdkitServer.StartAsync(["memory", "64M", "zeromode=none"], new NbdkitOptions { Filters = ["nozero"] });
        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server));
        connection.Export.CanWriteZeroes.Should().BeFalse();
        await FluentActions.Awaiting(() => connection.WriteZeroesAsync(0, 4096).AsTask()).Should().ThrowAsync<NbdRequestRefusedException>();
    }

    [Fact]
    public async Task NoStructuredReplies_ReadsUseSimpleReplies_AndBlockStatusIsRefused()
    {
        // §7: --no-sr
        await using var server = await NbdkitServer.StartAsync(["memory", "64M"], new NbdkitOptions { ServerArgs = ["--no-sr"] });
        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server));
        connection.Export.StructuredReplies.Should().BeFalse();
        connection.Export.CanBlockStatus.Should().BeFalse();
        var data = Endpoints.RandomBytes(1 << 20, 8);
        await connection.WriteAsync(4096, data);
        var back = new byte[data.Length];
        await connection.ReadAsync(4096, back);
        back.Should().Equal(data);
        await FluentActions.Awaiting(() => connection.GetExtentsAsync(0, 4096).AsTask()).Should().ThrowAsync<NbdRequestRefusedException>();
    }

    [Fact]
    public async Task NoExtentsFilter_ReportsEverythingAsData()
    {
        await using var server = await NbdkitServer.StartAsync(["memory", "64M"], new NbdkitOptions { Filters = ["noextents"] });
        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server));
        var extents = await connection.GetExtentsAsync(0, 64 << 20);
        extents.Should().ContainSingle().Which.Should().Be(new NbdExtent(0, 64 << 20, 0));
    }

    [Fact]
    public async Task BlockSizeConstraints_AreHonoured()
    {
        // §8: minimum 512, maximum 1 MiB, violations answered with EINVAL by the server.
        await using var server = await NbdkitServer.StartAsync(
            ["memory", "64M", "blocksize-minimum=512", "blocksize-preferred=4096", "blocksize-maximum=1M", "blocksize-error-policy=error"],
            new NbdkitOptions { Filters = ["blocksize-policy"] });
        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server));
        connection.Export.MinimumBlockSize.Should().Be(512);
        connection.Export.PreferredBlockSize.Should().Be(4096);
        connection.Export.MaximumPayload.Should().Be(1 << 20);

        await FluentActions.Awaiting(() => connection.WriteAsync(1, new byte[512]).AsTask()).Should().ThrowAsync<NbdRequestRefusedException>().WithMessage("*aligned*");
        var data = Endpoints.RandomBytes(3 << 20, 9);
        await connection.WriteAsync(512, data); // split into 1 MiB requests, which the server accepts
        var back = new byte[data.Length];
        await connection.ReadAsync(512, back);
        back.Should().Equal(data);
    }

    [Fact]
    public async Task ServerShutdownError_SoftDisconnectsTheConnection()
    {
        // §2: error-file switches ESHUTDOWN on at an exact moment; the client MUST soft-disconnect.
        using var dir = TempDirectory.Create();
        var inject = dir.Combine("inject");
        await using var server = await NbdkitServer.StartAsync(["memory", "64M", "error=ESHUTDOWN", "error-rate=100%", $"error-file={inject}"],
            new NbdkitOptions { Filters = ["error"] });
        await using var connection = await NbdConnection.ConnectAsync(Endpoints.Of(server));
        await connection.ReadAsync(0, new byte[4096]);

        await File.WriteAllTextAsync(inject, "");
        var failure = (await FluentActions.Awaiting(() => connection.ReadAsync(0, new byte[4096]).AsTask()).Should().ThrowAsync<NbdCommandException>()).Which;
        failure.Error.Should().Be(NbdErrorCode.ESHUTDOWN);
        connection.IsClosed.Should().BeTrue("ESHUTDOWN makes the client stop using the connection");
        var closed = (await FluentActions.Awaiting(() => connection.ReadAsync(0, new byte[4096]).AsTask()).Should().ThrowAsync<NbdConnectionException>()).Which;
        closed.Reason.Should().Be(NbdConnectionFailure.ServerShutdown);
        (await connection.Completion.WaitAsync(Endpoints.Bound)).Should().BeOfType<NbdConnectionException>()
            .Which.Reason.Should().Be(NbdConnectionFailure.ServerShutdown);
    }

    [Fact]
    public async Task UnknownExport_IsReportedAsSuch()
    {
        // §14: the exportname filter with exportname-strict=true knows only "disk".
        await using var server = await NbdkitServer.StartAsync(["memory", "64M", "exportname=disk", "exportname-strict=true"], new NbdkitOptions { Filters = ["exportname"] });
        var act = () => NbdConnection.ConnectAsync(Endpoints.Of(server) with { ExportName = "nope" });
        (await act.Should().ThrowAsync<NbdConnectionException>()).Which.Reason.Should().Be(NbdConnectionFailure.ExportNotFound);
        await using var good = await NbdConnection.ConnectAsync(Endpoints.Of(server) with { ExportName = "disk" });
        good.Export.Size.Should().Be(64 << 20);
    }
}
