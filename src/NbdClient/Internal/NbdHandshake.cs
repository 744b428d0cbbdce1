using System.Buffers.Binary;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using NbdClient.Protocol;

namespace NbdClient.Internal;

/// <summary>Fixed-newstyle negotiation (nbd-client-spec.md §3), in libnbd's order: STARTTLS (when
/// required), STRUCTURED_REPLY, SET_META_CONTEXT, GO with INFO_BLOCK_SIZE; EXPORT_NAME as the
/// fallback for servers that do not know GO. One option at a time.</summary>
internal sealed class NbdHandshake
{
    private readonly NbdEndpoint _endpoint;
    private readonly NbdClientOptions _options;
    private Stream _stream;
    private NbdReadBuffer _reader;
    private readonly byte[] _header = new byte[NbdWire.OptionReplyHeaderSize];
    private bool _noZeroes;
    private bool _fixedNewstyle;

    private NbdHandshake(Stream stream, NbdEndpoint endpoint, NbdClientOptions options)
    {
        _stream = stream;
        _reader = new NbdReadBuffer(stream, 4096);
        _endpoint = endpoint;
        _options = options;
    }

    public sealed record Result(Stream Stream, NbdExportInfo Export, NbdReadBuffer Reader);

    public static Task<Result> RunAsync(Stream stream, NbdEndpoint endpoint, NbdClientOptions options, CancellationToken cancellationToken)
        => new NbdHandshake(stream, endpoint, options).RunAsync(cancellationToken);

    private async Task<Result> RunAsync(CancellationToken cancellationToken)
    {
        // S: greeting (18) 0 u64 NBDMAGIC | 8 u64 IHAVEOPT | 16 u16 handshake flags
        await FillAsync(NbdWire.GreetingSize, cancellationToken).ConfigureAwait(false);
        var greeting = _reader.Span;
        if (BinaryPrimitives.ReadUInt64BigEndian(greeting) != NbdMagic.InitPasswd)
            throw Protocol("server did not send the NBD magic (is this an NBD server?)");
        var second = BinaryPrimitives.ReadUInt64BigEndian(greeting[8..]);
        if (second == NbdMagic.OldStyle)
            throw new NbdConnectionException(NbdConnectionFailure.Refused, NbdPhase.Handshake, "the server speaks the oldstyle protocol, which is not supported");
        if (second != NbdMagic.IHaveOpt)
            throw Protocol($"unexpected handshake magic 0x{second:x16}");
        var serverFlags = (NbdHandshakeFlags)BinaryPrimitives.ReadUInt16BigEndian(greeting[16..]);
        _reader.Consume(NbdWire.GreetingSize);

        // Never set a client flag the server did not advertise: it must drop us (trap 2).
        var clientFlags = serverFlags & (NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes);
        _fixedNewstyle = (clientFlags & NbdHandshakeFlags.FixedNewstyle) != 0;
        _noZeroes = (clientFlags & NbdHandshakeFlags.NoZeroes) != 0;
        var flagBytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(flagBytes, (uint)clientFlags);
        await _stream.WriteAsync(flagBytes, cancellationToken).ConfigureAwait(false);

        if (!_fixedNewstyle)
        {
            // Only EXPORT_NAME is allowed, and TLS is impossible (trap 24).
            if (_endpoint.RequireTls)
                throw new NbdConnectionException(NbdConnectionFailure.TlsUnavailable, NbdPhase.Handshake, "TLS is required but the server does not speak fixed newstyle, so it cannot negotiate TLS");
            return await ExportNameAsync(structured: false, cancellationToken).ConfigureAwait(false);
        }

        var tls = false;
        if (_endpoint.RequireTls)
        {
            await StartTlsAsync(cancellationToken).ConfigureAwait(false);
            tls = true;
        }

        var structured = false;
        if (_options.StructuredReplies)
        {
            var reply = await SendOptionAsync(NbdOption.StructuredReply, [], cancellationToken).ConfigureAwait(false);
            await SkipPayloadAsync(reply, cancellationToken).ConfigureAwait(false);
            if (reply.Type == NbdOptionReplyType.Ack)
                structured = true;
            else
                await ThrowIfFatalAsync(reply, "STRUCTURED_REPLY").ConfigureAwait(false);
        }

        var contexts = new Dictionary<string, uint>(StringComparer.Ordinal);
        if (structured && _options.MetaContexts.Count > 0)
            await SetMetaContextsAsync(contexts, cancellationToken).ConfigureAwait(false);

        return await GoAsync(structured, contexts, tls, cancellationToken).ConfigureAwait(false);
    }

    private async Task StartTlsAsync(CancellationToken cancellationToken)
    {
        var reply = await SendOptionAsync(NbdOption.StartTls, [], cancellationToken).ConfigureAwait(false);
        await SkipPayloadAsync(reply, cancellationToken).ConfigureAwait(false);
        if (reply.Type != NbdOptionReplyType.Ack)
        {
            await AbortAsync().ConfigureAwait(false);
            throw new NbdConnectionException(NbdConnectionFailure.TlsUnavailable, NbdPhase.Handshake,
                $"TLS is required (nbds://) but the server refused STARTTLS ({Describe(reply.Type)}); is the server configured with TLS?");
        }
        if (_reader.Buffered != 0)
            throw Protocol("server sent data after the STARTTLS reply");

        var tls = _options.Tls ?? new NbdTlsOptions();
        var host = _endpoint.TlsHostname ?? tls.Hostname ?? "localhost";
        X509Certificate2Collection? clientCertificates = null;
        if (tls.ClientCertificateFile is not null)
            clientCertificates = [X509Certificate2.CreateFromPemFile(tls.ClientCertificateFile, tls.ClientKeyFile)];
        var trusted = tls.CaFile is null ? null : LoadCertificates(tls.CaFile);

        var ssl = new SslStream(_stream, leaveInnerStreamOpen: false);
        try
        {
            await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
            {
                TargetHost = host,
                ClientCertificates = clientCertificates,
                EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
                CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                // Always verify the server, also over unix sockets (libnbd does not: trap 22).
                RemoteCertificateValidationCallback = (_, certificate, _, errors) => Validate(certificate, errors, trusted),
            }, cancellationToken).ConfigureAwait(false);
        }
        catch (AuthenticationException ex)
        {
            await ssl.DisposeAsync().ConfigureAwait(false);
            throw new NbdConnectionException(NbdConnectionFailure.TlsFailed, NbdPhase.Tls,
                $"TLS handshake with {host} failed: {ex.Message}{(ex.InnerException is null ? "" : $" ({ex.InnerException.Message})")}", ex);
        }
        catch (IOException ex)
        {
            await ssl.DisposeAsync().ConfigureAwait(false);
            throw new NbdConnectionException(NbdConnectionFailure.TlsFailed, NbdPhase.Tls,
                $"TLS handshake with {host} failed: {ex.Message} (a server that requires a client certificate, like qemu-nbd's default verify-peer=on, closes the connection)", ex);
        }
        _stream = ssl;
        _reader = new NbdReadBuffer(ssl, 4096);
    }

    private static X509Certificate2Collection LoadCertificates(string path)
    {
        var collection = new X509Certificate2Collection();
        collection.ImportFromPemFile(path);
        if (collection.Count == 0)
            throw new NbdConnectionException(NbdConnectionFailure.TlsFailed, NbdPhase.Tls, $"no certificate found in CA file {path}");
        return collection;
    }

    private static bool Validate(X509Certificate? certificate, SslPolicyErrors errors, X509Certificate2Collection? trusted)
    {
        if (certificate is null || (errors & SslPolicyErrors.RemoteCertificateNotAvailable) != 0)
            return false;
        if ((errors & SslPolicyErrors.RemoteCertificateNameMismatch) != 0)
            return false;
        if (trusted is null)
            return errors == SslPolicyErrors.None;
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(trusted);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        using var cert = new X509Certificate2(certificate);
        return chain.Build(cert);
    }

    private async Task SetMetaContextsAsync(Dictionary<string, uint> contexts, CancellationToken cancellationToken)
    {
        // A query ending in ':' (e.g. "qemu:dirty-bitmap:") is a namespace: discover its members with LIST first.
        var queries = new List<string>();
        foreach (var query in _options.MetaContexts)
        {
            if (!query.EndsWith(':'))
            {
                queries.Add(query);
                continue;
            }
            var listed = new Dictionary<string, uint>(StringComparer.Ordinal);
            await MetaContextOptionAsync(NbdOption.ListMetaContext, [query], listed, cancellationToken).ConfigureAwait(false);
            queries.AddRange(listed.Keys.Where(name => name.StartsWith(query, StringComparison.Ordinal)));
        }
        if (queries.Count > 0)
            await MetaContextOptionAsync(NbdOption.SetMetaContext, queries, contexts, cancellationToken).ConfigureAwait(false);
    }

    private async Task MetaContextOptionAsync(NbdOption option, IReadOnlyList<string> queries, Dictionary<string, uint> contexts, CancellationToken cancellationToken)
    {
        var data = NbdWire.EncodeMetaContextRequest(_endpoint.ExportName, queries);
        var reply = await SendOptionAsync(option, data, cancellationToken).ConfigureAwait(false);
        while (true)
        {
            if (reply.Type == NbdOptionReplyType.MetaContext)
            {
                var payload = await ReadPayloadAsync(reply, cancellationToken).ConfigureAwait(false);
                if (payload.Length < 4)
                    throw Protocol("META_CONTEXT reply shorter than 4 bytes");
                var id = BinaryPrimitives.ReadUInt32BigEndian(payload);
                contexts[Encoding.UTF8.GetString(payload, 4, payload.Length - 4)] = id;
            }
            else
            {
                await SkipPayloadAsync(reply, cancellationToken).ConfigureAwait(false);
                if (reply.Type == NbdOptionReplyType.Ack)
                    return;
                if (reply.IsError)
                {
                    // Block status is optional: carry on without contexts, unless the server is going away.
                    await ThrowIfFatalAsync(reply, option.ToString()).ConfigureAwait(false);
                    contexts.Clear();
                    return;
                }
            }
            reply = await ReadOptionReplyAsync(option, cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task<Result> GoAsync(bool structured, Dictionary<string, uint> contexts, bool tls, CancellationToken cancellationToken)
    {
        var data = NbdWire.EncodeInfoRequest(_endpoint.ExportName, [NbdInfoType.BlockSize]);
        var reply = await SendOptionAsync(NbdOption.Go, data, cancellationToken).ConfigureAwait(false);
        long? size = null;
        var flags = NbdTransmissionFlags.None;
        uint minimum = 0, preferred = 0, maximum = 0;
        while (reply.Type == NbdOptionReplyType.Info)
        {
            var payload = await ReadPayloadAsync(reply, cancellationToken).ConfigureAwait(false);
            if (payload.Length < 2)
                throw Protocol("INFO reply shorter than 2 bytes");
            switch ((NbdInfoType)BinaryPrimitives.ReadUInt16BigEndian(payload))
            {
                case NbdInfoType.Export:
                    if (payload.Length != 12)
                        throw Protocol($"INFO_EXPORT has length {payload.Length}, expected 12");
                    size = ReadSize(payload.AsSpan(2));
                    flags = (NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(payload.AsSpan(10));
                    break;
                case NbdInfoType.BlockSize:
                    if (payload.Length != 14)
                        throw Protocol($"INFO_BLOCK_SIZE has length {payload.Length}, expected 14");
                    minimum = BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(2));
                    preferred = BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(6));
                    maximum = BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(10));
                    break;
                default:
                    break; // unknown info types MUST be ignored
            }
            reply = await ReadOptionReplyAsync(NbdOption.Go, cancellationToken).ConfigureAwait(false);
        }
        await SkipPayloadAsync(reply, cancellationToken).ConfigureAwait(false);
        if (reply.Type == NbdOptionReplyType.ErrUnsup)
            return await ExportNameAsync(structured, cancellationToken, contexts, tls).ConfigureAwait(false);
        if (reply.Type != NbdOptionReplyType.Ack)
        {
            var message = _lastErrorMessage;
            await AbortAsync().ConfigureAwait(false);
            throw reply.Type switch
            {
                NbdOptionReplyType.ErrUnknown => new NbdConnectionException(NbdConnectionFailure.ExportNotFound, NbdPhase.Handshake, $"the server has no export named '{_endpoint.ExportName}'{Suffix(message)}"),
                NbdOptionReplyType.ErrTlsRequired => TlsRequired(message),
                NbdOptionReplyType.ErrShutdown => new NbdConnectionException(NbdConnectionFailure.ServerShutdown, NbdPhase.Handshake, $"the server is shutting down{Suffix(message)}"),
                _ => new NbdConnectionException(NbdConnectionFailure.Refused, NbdPhase.Handshake, $"the server refused NBD_OPT_GO: {Describe(reply.Type)}{Suffix(message)}"),
            };
        }
        if (size is null)
            throw Protocol("the server acknowledged GO without sending INFO_EXPORT");
        return Finish(size.Value, flags, structured, contexts, tls, minimum, preferred, maximum);
    }

    private async Task<Result> ExportNameAsync(bool structured, CancellationToken cancellationToken, Dictionary<string, uint>? contexts = null, bool tls = false)
    {
        // EXPORT_NAME has no error path: an unknown export makes the server close the socket.
        var name = Encoding.UTF8.GetBytes(_endpoint.ExportName);
        var message = new byte[NbdWire.OptionHeaderSize + name.Length];
        NbdWire.WriteOptionHeader(message, NbdOption.ExportName, name.Length);
        name.CopyTo(message, NbdWire.OptionHeaderSize);
        await _stream.WriteAsync(message, cancellationToken).ConfigureAwait(false);
        // Trap 1: 124 zero bytes follow unless both sides set NO_ZEROES.
        var replySize = 10 + (_noZeroes ? 0 : 124);
        if (!await _reader.FillAsync(replySize, cancellationToken).ConfigureAwait(false))
            throw new NbdConnectionException(NbdConnectionFailure.ExportNotFound, NbdPhase.Handshake,
                $"the server closed the connection after NBD_OPT_EXPORT_NAME '{_endpoint.ExportName}' (no such export?)");
        var size = ReadSize(_reader.Span);
        var flags = (NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(_reader.Span[8..]);
        _reader.Consume(replySize);
        // Without GO the server could not tell us about meta contexts for this export reliably; keep what SET returned.
        return Finish(size, flags, structured, contexts ?? [], tls, 0, 0, 0);
    }

    private Result Finish(long size, NbdTransmissionFlags flags, bool structured, Dictionary<string, uint> contexts, bool tls, uint minimum, uint preferred, uint maximum)
    {
        // libnbd rejects eflags == 0; HAS_FLAGS MUST be set.
        if ((flags & NbdTransmissionFlags.HasFlags) == 0)
            throw Protocol($"invalid transmission flags 0x{(ushort)flags:x4} (HAS_FLAGS is not set)");

        int min = 1, pref = 4096;
        var max = NbdLimits.DefaultMaxPayload;
        // Validation as libnbd's nbd_internal_set_block_size: a bad advertisement is ignored, not fatal.
        if (minimum != 0 && ValidBlockSizes(minimum, preferred, maximum))
        {
            min = (int)minimum;
            pref = (int)preferred;
            max = maximum == uint.MaxValue ? NbdLimits.DefaultMaxPayload : (int)Math.Min(maximum, (uint)NbdLimits.DefaultMaxPayload);
        }
        var payload = Math.Min(Math.Min(max, _options.MaxPayload), NbdLimits.DefaultMaxPayload);
        payload -= payload % min;
        if (payload <= 0)
            payload = min;

        var export = new NbdExportInfo
        {
            Size = size,
            Flags = flags,
            MinimumBlockSize = min,
            PreferredBlockSize = pref,
            MaximumPayload = payload,
            StructuredReplies = structured,
            MetaContexts = contexts,
            Tls = tls,
        };
        return new Result(_stream, export, _reader);
    }

    private static bool ValidBlockSizes(uint minimum, uint preferred, uint maximum) =>
        minimum <= 65536 && uint.IsPow2(minimum) && uint.IsPow2(preferred) && preferred >= 512
        && minimum <= preferred && preferred <= maximum && (maximum == uint.MaxValue || maximum % minimum == 0);

    private static long ReadSize(ReadOnlySpan<byte> source)
    {
        var size = BinaryPrimitives.ReadUInt64BigEndian(source);
        if (size > long.MaxValue)
            throw Protocol($"export size {size} does not fit in a signed 64-bit integer");
        return (long)size;
    }

    private string? _lastErrorMessage;

    private async Task<NbdWire.OptionReplyHeader> SendOptionAsync(NbdOption option, byte[] data, CancellationToken cancellationToken)
    {
        var message = new byte[NbdWire.OptionHeaderSize + data.Length];
        NbdWire.WriteOptionHeader(message, option, data.Length);
        data.CopyTo(message, NbdWire.OptionHeaderSize);
        await _stream.WriteAsync(message, cancellationToken).ConfigureAwait(false);
        return await ReadOptionReplyAsync(option, cancellationToken).ConfigureAwait(false);
    }

    private async Task<NbdWire.OptionReplyHeader> ReadOptionReplyAsync(NbdOption option, CancellationToken cancellationToken)
    {
        await FillAsync(NbdWire.OptionReplyHeaderSize, cancellationToken).ConfigureAwait(false);
        if (!NbdWire.TryReadOptionReplyHeader(_reader.Span, out var header))
            throw Protocol("invalid option reply magic");
        _reader.Consume(NbdWire.OptionReplyHeaderSize);
        if (header.Option != option)
            throw Protocol($"option reply for {header.Option} while waiting for {option}");
        if (header.Length > NbdLimits.MaxOptionReply || (header.IsError && header.Length > NbdLimits.MaxString))
            throw Protocol($"option reply of {header.Length} bytes is too long");
        if (header.Type == NbdOptionReplyType.Ack && header.Length != 0)
            throw Protocol("ACK option reply with a payload");
        if (header.IsError)
        {
            var payload = await ReadPayloadAsync(header, cancellationToken).ConfigureAwait(false);
            _lastErrorMessage = Encoding.UTF8.GetString(payload);
            header = header with { Length = 0 };
        }
        return header;
    }

    private async Task<byte[]> ReadPayloadAsync(NbdWire.OptionReplyHeader header, CancellationToken cancellationToken)
    {
        var payload = new byte[header.Length];
        if (!await _reader.ReadExactAsync(payload, cancellationToken).ConfigureAwait(false))
            throw Eof();
        return payload;
    }

    private async Task SkipPayloadAsync(NbdWire.OptionReplyHeader header, CancellationToken cancellationToken)
    {
        if (header.Length > 0 && !await _reader.SkipAsync(header.Length, cancellationToken).ConfigureAwait(false))
            throw Eof();
    }

    private async Task FillAsync(int count, CancellationToken cancellationToken)
    {
        if (!await _reader.FillAsync(count, cancellationToken).ConfigureAwait(false))
            throw Eof();
    }

    /// <summary>Soft disconnect during negotiation; the server may close without an ACK.</summary>
    private async Task AbortAsync()
    {
        try
        {
            var message = new byte[NbdWire.OptionHeaderSize];
            NbdWire.WriteOptionHeader(message, NbdOption.Abort, 0);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(1));
            await _stream.WriteAsync(message, timeout.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException)
        {
            // Best effort: the connection is being dropped anyway.
        }
    }

    /// <summary>ERR_TLS_REQD / ERR_SHUTDOWN to an optional option end the negotiation: soft-disconnect
    /// with NBD_OPT_ABORT first (the spec says MUST for ERR_SHUTDOWN; libnbd does it for both).</summary>
    private async Task ThrowIfFatalAsync(NbdWire.OptionReplyHeader reply, string option)
    {
        if (reply.Type is not (NbdOptionReplyType.ErrTlsRequired or NbdOptionReplyType.ErrShutdown))
            return;
        await AbortAsync().ConfigureAwait(false);
        if (reply.Type == NbdOptionReplyType.ErrTlsRequired)
            throw TlsRequired(_lastErrorMessage);
        throw new NbdConnectionException(NbdConnectionFailure.ServerShutdown, NbdPhase.Handshake, $"the server is shutting down (reply to {option}){Suffix(_lastErrorMessage)}");
    }

    private static NbdConnectionException TlsRequired(string? message) =>
        new(NbdConnectionFailure.TlsRequired, NbdPhase.Handshake,
            $"the server requires TLS; connect with an nbds:// or nbds+unix:// URI and TLS settings{Suffix(message)}");

    private static string Suffix(string? message) => string.IsNullOrEmpty(message) ? "" : $": {message}";

    private static string Describe(NbdOptionReplyType type) => type switch
    {
        NbdOptionReplyType.ErrUnsup => "ERR_UNSUP",
        NbdOptionReplyType.ErrPolicy => "ERR_POLICY",
        NbdOptionReplyType.ErrInvalid => "ERR_INVALID",
        NbdOptionReplyType.ErrPlatform => "ERR_PLATFORM",
        NbdOptionReplyType.ErrTlsRequired => "ERR_TLS_REQD",
        NbdOptionReplyType.ErrUnknown => "ERR_UNKNOWN",
        NbdOptionReplyType.ErrShutdown => "ERR_SHUTDOWN",
        NbdOptionReplyType.ErrBlockSizeRequired => "ERR_BLOCK_SIZE_REQD",
        NbdOptionReplyType.ErrTooBig => "ERR_TOO_BIG",
        _ => $"reply type 0x{(uint)type:x8}",
    };

    private static NbdConnectionException Protocol(string message) =>
        new(NbdConnectionFailure.ProtocolError, NbdPhase.Handshake, message);

    private NbdConnectionException Eof() =>
        new(NbdConnectionFailure.ConnectionClosed, NbdPhase.Handshake,
            $"the server closed the connection during the handshake{Suffix(_lastErrorMessage)}");
}
