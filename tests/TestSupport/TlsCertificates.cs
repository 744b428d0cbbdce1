namespace TestSupport;

/// <summary>
/// A throw-away PKI made with openssl (recipe in docs/nbd-fault-injection.md §13), laid out the way
/// nbdkit (--tls-certificates=DIR), qemu (tls-creds-x509,dir=DIR) and libnbd (tls-certificates=DIR) read it:
/// <code>
/// ca/          ca-cert.pem ca-key.pem           the test CA
/// server/      ca-cert.pem server-cert.pem server-key.pem    CN=localhost, SAN DNS:localhost, IP:127.0.0.1, serverAuth
/// client/      ca-cert.pem client-cert.pem client-key.pem    CN=nbd-client, clientAuth, signed by the CA
/// ca-only/     ca-cert.pem                      a client that trusts the CA but has no certificate
/// wrong-ca/    ca-cert.pem ca-key.pem           an unrelated CA: trusting only it must fail verification
/// wrong-client/ ca-cert.pem client-cert.pem client-key.pem   trusts the CA, but its certificate is signed by the wrong CA
/// </code>
/// </summary>
public sealed class TlsCertificates
{
    private const int Days = 30;

    private TlsCertificates(string directory) => Directory = directory;

    public string Directory { get; }

    public string CaDirectory => Path.Combine(Directory, "ca");

    public string CaCertificate => Path.Combine(CaDirectory, "ca-cert.pem");

    public string CaKey => Path.Combine(CaDirectory, "ca-key.pem");

    /// <summary>The server directory: pass it to nbdkit --tls-certificates or qemu's tls-creds-x509 dir=.</summary>
    public string ServerDirectory => Path.Combine(Directory, "server");

    public string ServerCertificate => Path.Combine(ServerDirectory, "server-cert.pem");

    public string ServerKey => Path.Combine(ServerDirectory, "server-key.pem");

    /// <summary>libnbd client directory with a client certificate (tls-certificates=DIR).</summary>
    public string ClientDirectory => Path.Combine(Directory, "client");

    public string ClientCertificate => Path.Combine(ClientDirectory, "client-cert.pem");

    public string ClientKey => Path.Combine(ClientDirectory, "client-key.pem");

    /// <summary>libnbd client directory that trusts the CA and has no client certificate.</summary>
    public string CaOnlyDirectory => Path.Combine(Directory, "ca-only");

    /// <summary>Directory of an unrelated CA; its ca-cert.pem must not verify the server.</summary>
    public string WrongCaDirectory => Path.Combine(Directory, "wrong-ca");

    public string WrongCaCertificate => Path.Combine(WrongCaDirectory, "ca-cert.pem");

    /// <summary>Client directory whose certificate the server must reject (signed by the wrong CA).</summary>
    public string WrongClientDirectory => Path.Combine(Directory, "wrong-client");

    public string WrongClientCertificate => Path.Combine(WrongClientDirectory, "client-cert.pem");

    public string WrongClientKey => Path.Combine(WrongClientDirectory, "client-key.pem");

    /// <summary>Creates the whole layout under <paramref name="directory"/> (created if missing).</summary>
    public static async Task<TlsCertificates> CreateAsync(string directory, CancellationToken cancellationToken = default)
    {
        var certificates = new TlsCertificates(Path.GetFullPath(directory));
        foreach (var dir in new[] { certificates.CaDirectory, certificates.ServerDirectory, certificates.ClientDirectory, certificates.CaOnlyDirectory, certificates.WrongCaDirectory, certificates.WrongClientDirectory })
        {
            System.IO.Directory.CreateDirectory(dir);
        }

        await CreateCaAsync(certificates.CaDirectory, "nbd-test-ca", cancellationToken).ConfigureAwait(false);
        await CreateCaAsync(certificates.WrongCaDirectory, "nbd-wrong-ca", cancellationToken).ConfigureAwait(false);
        await CreateSignedAsync(certificates.CaDirectory, certificates.ServerDirectory, "server", "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
            cancellationToken).ConfigureAwait(false);
        await CreateSignedAsync(certificates.CaDirectory, certificates.ClientDirectory, "client", "nbd-client",
            "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
            cancellationToken).ConfigureAwait(false);
        await CreateSignedAsync(certificates.WrongCaDirectory, certificates.WrongClientDirectory, "client", "nbd-wrong-client",
            "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
            cancellationToken).ConfigureAwait(false);

        // Every directory that a peer reads trusts the right CA, except wrong-ca itself.
        foreach (var dir in new[] { certificates.ServerDirectory, certificates.ClientDirectory, certificates.CaOnlyDirectory, certificates.WrongClientDirectory })
        {
            File.Copy(certificates.CaCertificate, Path.Combine(dir, "ca-cert.pem"), overwrite: true);
        }

        return certificates;
    }

    /// <summary>Writes <c>DIR/keys.psk</c> (<c>username:hexkey</c>, mode 0600), the layout both nbdkit
    /// --tls-psk=FILE and qemu's tls-creds-psk dir=DIR expect. Returns the file path.</summary>
    public static async Task<string> CreatePskFileAsync(string directory, string username = "alice", CancellationToken cancellationToken = default)
    {
        System.IO.Directory.CreateDirectory(directory);
        var path = Path.Combine(Path.GetFullPath(directory), "keys.psk");
        var key = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32));
        await File.WriteAllTextAsync(path, $"{username}:{key}\n", cancellationToken).ConfigureAwait(false);
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }

        return path;
    }

    private static async Task CreateCaAsync(string dir, string commonName, CancellationToken cancellationToken)
        => await OpenSslAsync(
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", $"{Days}", "-subj", $"/CN={commonName}",
             "-keyout", Path.Combine(dir, "ca-key.pem"), "-out", Path.Combine(dir, "ca-cert.pem")],
            cancellationToken).ConfigureAwait(false);

    private static async Task CreateSignedAsync(string caDir, string dir, string role, string commonName, string extensions, CancellationToken cancellationToken)
    {
        var key = Path.Combine(dir, $"{role}-key.pem");
        var request = Path.Combine(dir, $"{role}.csr");
        var extensionFile = Path.Combine(dir, $"{role}-ext.cnf");
        await OpenSslAsync(["req", "-newkey", "rsa:2048", "-nodes", "-subj", $"/CN={commonName}", "-keyout", key, "-out", request], cancellationToken).ConfigureAwait(false);
        await File.WriteAllTextAsync(extensionFile, extensions, cancellationToken).ConfigureAwait(false);
        await OpenSslAsync(
            ["x509", "-req", "-in", request, "-CA", Path.Combine(caDir, "ca-cert.pem"), "-CAkey", Path.Combine(caDir, "ca-key.pem"),
             "-set_serial", $"0x{Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8))}",
             "-days", $"{Days}", "-extfile", extensionFile, "-out", Path.Combine(dir, $"{role}-cert.pem")],
            cancellationToken).ConfigureAwait(false);
        File.Delete(request);
        File.Delete(extensionFile);
    }

    private static async Task OpenSslAsync(IEnumerable<string> args, CancellationToken cancellationToken)
        => (await ExternalProcess.RunAsync(Tool.Require("openssl"), args, TimeSpan.FromMinutes(1), cancellationToken: cancellationToken).ConfigureAwait(false)).EnsureSuccess();
}
