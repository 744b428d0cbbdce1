using ImageioProxy.Checksums;
using NbdClient;

namespace ImageioProxy.Tests.Checksums;

public class BlockHashTests
{
    private const int KiB = 1024;
    private const int MiB = 1024 * KiB;

    // The same images as make_blkhash_vectors.py builds.
    private static TestImage Image(string name) => name switch
    {
        "Empty" => TestImage.Build(),
        "AllZero8MiB" => TestImage.Build(new Segment.Zero(8 * MiB)),
        "Random9MiBPlus12345" => TestImage.Build(new Segment.Data("random", 9 * MiB + 12345)),
        "Random3MiBPlus100" => TestImage.Build(new Segment.Data("random", 3 * MiB + 100)),
        "ZeroPartialTail" => TestImage.Build(new Segment.Data("tail", 1 * MiB), new Segment.Zero(1 * MiB + 4096)),
        "Mixed" => TestImage.Build(
            new Segment.Data("mixed-a", 1 * MiB + 5),
            new Segment.Zero(3 * MiB - 5),
            new Segment.Data("mixed-b", 100 * KiB),
            new Segment.Zero(5 * MiB),
            new Segment.WrittenZero(2 * MiB),
            new Segment.Data("mixed-c", 777),
            new Segment.Zero(1 * MiB + 3)),
        _ => throw new ArgumentOutOfRangeException(nameof(name)),
    };

    /// <summary>Produced by make_blkhash_vectors.py with ovirt-imageio 0eb617c's checksum operation and
    /// blkhash.checksum() (python 3.11 hashlib), which agreed on every case.</summary>
    public static TheoryData<string, string, int, string> ImageioVectors => new()
    {
        { "Empty", "blake2b", 4194304, "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8" },
        { "AllZero8MiB", "blake2b", 4194304, "326cb82c7e9485f10456949e3c40f5396c64e9e3703d1d8ed30e2fd0084eef83" },
        { "Random9MiBPlus12345", "blake2b", 4194304, "101474c819694013ed88b0d26b251dad08d2751fc750f744a5523530aae36c7b" },
        { "Random3MiBPlus100", "blake2b", 1048576, "a713e64eae4dbcd9f47616050753f699b2c97109ac02d48e1662fc1322efc304" },
        { "ZeroPartialTail", "blake2b", 1048576, "057fd44ee597395aaf76d0726af607b7603c6ab339e9c82643767f3bb1311846" },
        { "Mixed", "blake2b", 4194304, "91d02f6779f11a9fe79f498cff8f8424d3f0b4a02b9231ce5278e667c43cc6bf" },
        { "Mixed", "blake2b", 1048576, "63d554aba0ac5f1b3e11eda3d7f4557d075aee97f6f9c20a4b98bef73990071f" },
        { "Mixed", "sha1", 1048576, "02601f01a7c97666be08f3f5b16bf4e96cb02f8c" },
        { "Mixed", "sha256", 1048576, "0bf2d1571d04a1b7d729b466814767b194443a137523ab8eb9cdbbd2cd482568" },
        { "Mixed", "sha384", 1048576, "a1fa8cb62f535917617614f5676e105db8f6a2e8823a847b92f2e9c711c316fe68b31f72ee2345b2b4a38317c7d63e32" },
        { "Mixed", "sha512", 1048576, "6a7fba3175fb4121f87169decc51b3a4e6d857b210432cbca751374a4a0ac70859fb4766b67bf3b861eec7fdaaf631d943c24329869fffd81fc4d5165ed5e403" },
        { "Mixed", "md5", 1048576, "f1024ebe84884c2cb154008ff7ab24c2" },
        { "Mixed", "sha3_256", 1048576, "99b278ea78aa7cd6fec8e0645866ab5097f388cbab69cdde2944b071f356fcb7" },
        { "Mixed", "sha3_512", 1048576, "7031efa6348e2d1b6f45996056d423efc9b011426b1fb49f5720846ce0d90e65b76187ddcc4471cce51c5151ae102ce92fc5dd0b60709e8790903826fb78c3cc" },
    };

    [Theory]
    [MemberData(nameof(ImageioVectors))]
    public async Task ComputeAsync_with_extents_matches_imageio(string image, string algorithm, int blockSize, string expected)
    {
        var testImage = Image(image);
        var source = new InMemoryChecksumSource(testImage.Bytes, testImage.Extents);

        var checksum = await BlockHash.ComputeAsync(source, testImage.Bytes.Length, algorithm, blockSize, CancellationToken.None);

        checksum.Should().Be(expected);
    }

    [Theory]
    [MemberData(nameof(ImageioVectors))]
    public async Task ComputeAsync_without_extents_matches_imageio(string image, string algorithm, int blockSize, string expected)
    {
        var testImage = Image(image);
        var source = new InMemoryChecksumSource(testImage.Bytes, []);

        var checksum = await BlockHash.ComputeAsync(source, testImage.Bytes.Length, algorithm, blockSize, CancellationToken.None);

        checksum.Should().Be(expected);
        // Every block was read: nothing claimed it was zero.
        source.Reads.Should().HaveCount((int)((testImage.Bytes.Length + blockSize - 1) / blockSize));
    }

    [Fact]
    public async Task Blocks_that_extents_mark_zero_are_not_read()
    {
        var image = Image("Mixed");
        var source = new InMemoryChecksumSource(image.Bytes, image.Extents);

        await BlockHash.ComputeAsync(source, image.Bytes.Length, "blake2b", 1 * MiB, CancellationToken.None);

        // Blocks 2-3 and 5-8 lie entirely in zero extents, and so does the partial last block 12.
        // Blocks 1 and 9 are partly zero and must be read; 10-11 are written zeroes reported as data.
        source.Reads.Select(r => r.Offset / MiB).Order().Should().Equal(0, 1, 4, 9, 10, 11);
        source.Reads.Should().OnlyContain(r => r.Length == MiB);
    }

    [Fact]
    public async Task An_all_zero_image_is_not_read_at_all()
    {
        var image = Image("AllZero8MiB");
        var source = new InMemoryChecksumSource(image.Bytes, image.Extents);

        var checksum = await BlockHash.ComputeAsync(source, image.Bytes.Length, "blake2b", 4 * MiB, CancellationToken.None);

        checksum.Should().Be("326cb82c7e9485f10456949e3c40f5396c64e9e3703d1d8ed30e2fd0084eef83");
        source.Reads.Should().BeEmpty();
        source.ExtentQueries.Should().Equal((0L, 8L * MiB));
    }

    [Fact]
    public async Task Extents_are_queried_in_windows_of_whole_blocks()
    {
        // 4 KiB blocks make the 512-block window 2 MiB, so a 5 MiB image needs three queries.
        var image = TestImage.Build(new Segment.Zero(5 * MiB));
        var source = new InMemoryChecksumSource(image.Bytes, image.Extents);

        await BlockHash.ComputeAsync(source, image.Bytes.Length, "sha1", 4 * KiB, CancellationToken.None);

        source.ExtentQueries.Should().Equal((0L, 2L * MiB), (2L * MiB, 2L * MiB), (4L * MiB, 1L * MiB));
        source.Reads.Should().BeEmpty();
    }

    [Fact]
    public async Task Reads_are_pipelined_up_to_the_limit()
    {
        var image = Image("Random9MiBPlus12345");
        var fourStarted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        InMemoryChecksumSource? source = null;
        source = new InMemoryChecksumSource(image.Bytes, image.Extents)
        {
            // Hold every read until four are in flight; without pipelining this never completes.
            BeforeRead = _ =>
            {
                if (source!.Reads.Count >= 4)
                {
                    fourStarted.TrySetResult();
                }

                return fourStarted.Task;
            },
        };

        var checksum = await BlockHash.ComputeAsync(source, image.Bytes.Length, "blake2b", 1 * MiB, readsInFlight: 4, CancellationToken.None)
            .WaitAsync(TimeSpan.FromSeconds(60), CancellationToken.None);

        source.MaxReadsInFlight.Should().Be(4);
        checksum.Should().Be(ReferenceBlake2b(image, 1 * MiB));
    }

    [Fact]
    public async Task Reads_completing_out_of_order_are_hashed_in_image_order()
    {
        var image = Image("Mixed");
        var held = new List<(long Offset, TaskCompletionSource Gate)>();
        var source = new InMemoryChecksumSource(image.Bytes, image.Extents)
        {
            BeforeRead = offset =>
            {
                var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                lock (held)
                {
                    held.Add((offset, gate));
                    if (held.Count == 3)
                    {
                        // Release the first three reads newest first.
                        foreach (var (_, g) in Enumerable.Reverse(held))
                        {
                            g.SetResult();
                        }
                    }
                    else if (held.Count > 3)
                    {
                        gate.SetResult();
                    }
                }

                return gate.Task;
            },
        };

        var checksum = await BlockHash.ComputeAsync(source, image.Bytes.Length, "blake2b", 1 * MiB, readsInFlight: 3, CancellationToken.None)
            .WaitAsync(TimeSpan.FromSeconds(60), CancellationToken.None);

        checksum.Should().Be("63d554aba0ac5f1b3e11eda3d7f4557d075aee97f6f9c20a4b98bef73990071f");
        source.MaxReadsInFlight.Should().Be(3);
    }

    [Fact]
    public async Task A_failed_read_fails_the_checksum_after_the_other_reads_finished()
    {
        var image = Image("Random9MiBPlus12345");
        var source = new FailingSource(image.Bytes, failAtOffset: 2 * MiB);

        var act = () => BlockHash.ComputeAsync(source, image.Bytes.Length, "sha256", 1 * MiB, CancellationToken.None);

        (await act.Should().ThrowAsync<IOException>()).WithMessage("boom at 2097152");
        source.InFlight.Should().Be(0);
    }

    [Fact]
    public async Task A_cancelled_checksum_throws_OperationCanceledException()
    {
        var image = Image("Random3MiBPlus100");
        var source = new InMemoryChecksumSource(image.Bytes, image.Extents);
        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();

        var act = () => BlockHash.ComputeAsync(source, image.Bytes.Length, "blake2b", 1 * MiB, cts.Token);

        await act.Should().ThrowAsync<OperationCanceledException>();
    }

    [Fact]
    public async Task Size_limits_the_hashed_range()
    {
        var image = Image("Random9MiBPlus12345");
        var source = new InMemoryChecksumSource(image.Bytes, image.Extents);

        var checksum = await BlockHash.ComputeAsync(source, 3 * MiB + 100, "blake2b", 1 * MiB, CancellationToken.None);

        // The first 3 MiB + 100 bytes of "random" are exactly the Random3MiBPlus100 image.
        checksum.Should().Be("a713e64eae4dbcd9f47616050753f699b2c97109ac02d48e1662fc1322efc304");
    }

    [Fact]
    public void Algorithms_are_sorted_and_include_the_required_ones()
    {
        BlockHash.Algorithms.Should().BeInAscendingOrder(StringComparer.Ordinal);
        BlockHash.Algorithms.Should().Contain(["blake2b", "md5", "sha1", "sha256", "sha512"]);
        BlockHash.Algorithms.Should().OnlyHaveUniqueItems();
        BlockHash.Algorithms.Should().OnlyContain(a => BlockHash.IsSupported(a));
    }

    [Theory]
    [InlineData("SHA1")]
    [InlineData("Blake2b")]
    [InlineData("blake2s")]
    [InlineData("shake_128")]
    [InlineData("")]
    [InlineData(" sha1")]
    public void IsSupported_rejects_unknown_names_case_sensitively(string algorithm)
    {
        BlockHash.IsSupported(algorithm).Should().BeFalse();
    }

    [Fact]
    public async Task ComputeAsync_rejects_an_unsupported_algorithm()
    {
        var source = new InMemoryChecksumSource([], []);

        var act = () => BlockHash.ComputeAsync(source, 0, "whirlpool", 4 * MiB, CancellationToken.None);

        await act.Should().ThrowAsync<ArgumentException>().WithMessage("Unsupported checksum algorithm 'whirlpool'*");
    }

    // The digest of an image computed without extents, zero detection or pipelining, straight from the
    // definition H(H(b1) + H(b2) + ...) with BLAKE2b-256, to cross-check images that have no python vector.
    private static string ReferenceBlake2b(TestImage image, int blockSize)
    {
        var hash = NSec.Cryptography.HashAlgorithm.Blake2b_256;
        var digests = new List<byte>();
        for (var offset = 0; offset < image.Bytes.Length; offset += blockSize)
        {
            digests.AddRange(hash.Hash(image.Bytes.AsSpan(offset, Math.Min(blockSize, image.Bytes.Length - offset))));
        }

        return Convert.ToHexStringLower(hash.Hash([.. digests]));
    }

    private sealed class FailingSource(byte[] image, long failAtOffset) : IChecksumSource
    {
        private int _inFlight;

        public int InFlight => Volatile.Read(ref _inFlight);

        public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct)
        {
            Interlocked.Increment(ref _inFlight);
            try
            {
                // Make the reads after the failing one still be running when it fails.
                await Task.Yield();
                if (offset == failAtOffset)
                {
                    throw new IOException($"boom at {offset}");
                }

                image.AsMemory((int)offset, buffer.Length).CopyTo(buffer);
            }
            finally
            {
                Interlocked.Decrement(ref _inFlight);
            }
        }

        public ValueTask<IReadOnlyList<NbdExtent>> GetExtentsAsync(long offset, long length, CancellationToken ct) =>
            ValueTask.FromResult<IReadOnlyList<NbdExtent>>([new NbdExtent(offset, length, 0)]);
    }
}
