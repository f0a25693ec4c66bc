import Foundation
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryCore
@testable import VMFactoryCommands
@testable import VMFactoryImage

@Suite(
    "vmfactory rootfs: hostile and damaged images refused, nothing cached; the disk cache and its commands",
    .tags(.integration), .scoped, .needsTool("umoci"), .needsTool("debugfs"), .needsTool("qemu-img")
)
struct RootfsSafetyIntegrationTests {
    /// Paths below `root` (outside image layouts and caches) named like what a hostile layer
    /// tried to write.
    static func strays(under root: String, named names: Set<String>) -> [String] {
        TestSupport.files(under: root).filter { names.contains(URL(fileURLWithPath: $0).lastPathComponent) }
    }

    /// No complete entry, no temporary folder or blob left in the cache.
    static func expectNothingCached(_ cache: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(RootfsCache(cacheDirectory: cache).list().isEmpty, "no converted image", sourceLocation: sourceLocation)
        let partial = TestSupport.files(under: cache).filter { $0.hasSuffix(".partial") }
        #expect(partial.isEmpty, "temporary files left: \(partial)", sourceLocation: sourceLocation)
    }

    static let hostile: [(name: String, entries: [ArchiveWriter.Entry], says: String)] = [
        ("dot-dot", [.init(path: "../escape-dotdot", kind: .file(Data("x".utf8)))], "the path leaves the root"),
        ("absolute", [.init(path: "/escape-absolute", kind: .file(Data("x".utf8)))], "absolute path"),
        ("symlink out", [
            .init(path: "out", kind: .symlink("../../../../../../tmp"), mode: 0o777),
            .init(path: "out/escape-symlink", kind: .file(Data("x".utf8))),
        ], "points outside the root"),
        ("hard link out", [.init(path: "escape-hardlink", kind: .hardlink("../../etc/passwd"))], "outside the root"),
        ("escaping whiteout", [.init(path: "sub/.wh...", kind: .file(Data()))], "outside its directory"),
        ("symlink loop", [
            .init(path: "a", kind: .symlink("b"), mode: 0o777),
            .init(path: "b", kind: .symlink("a"), mode: 0o777),
            .init(path: "a/escape-loop", kind: .file(Data("x".utf8))),
        ], "more than 40 symlinks"),
    ]

    @Test("hostile layers are refused naming the layer and the entry; nothing is written outside, nothing cached", arguments: hostile.indices)
    func hostileLayers(_ index: Int) async throws {
        let (name, entries, says) = Self.hostile[index]
        let dir = try TestSupport.temporaryDirectory()
        let image = try await ImageFixtures.singleLayer(entries, in: dir)
        let layer = try #require((try ImageFixtures.manifest(image)["layers"] as? [[String: Any]])?.first?["digest"] as? String)
        let cache = try TestSupport.temporaryDirectory("cache")
        let failure = try await Rootfs.failure([image.reference], cache: cache)
        #expect(failure.code == "hostile-archive", "\(name): \(failure)")
        #expect(failure.message.contains(says), "\(name): \(failure.message)")
        #expect(failure.message.contains(layer), "\(name): the message names the layer \(layer): \(failure.message)")
        #expect(failure.message.contains("'\(entries.last!.path)'"), "\(name): the message names the entry: \(failure.message)")
        let root = try #require(TestScope.root)
        #expect(Self.strays(under: root + "/..", named: ["escape-dotdot", "escape-absolute", "escape-symlink", "escape-hardlink", "escape-loop"]).isEmpty)
        #expect(!FileStore.exists("/escape-absolute") && !FileStore.exists("/tmp/escape-symlink"))
        Self.expectNothingCached(cache)
    }

    @Test("what looks odd but is not hostile: an absolute symlink followed inside the tree, a bare '.wh.' refused as invalid, a hard link to nothing")
    func insideTheTree() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let image = try await ImageFixtures.singleLayer([
            .init(path: "etc/", kind: .directory, mode: 0o755),
            .init(path: "conf", kind: .symlink("/etc"), mode: 0o777),
            .init(path: "conf/written", kind: .file(Data("inside\n".utf8))),
            .init(path: "up", kind: .symlink("etc/../.."), mode: 0o777),
        ], in: dir)
        let result = try await Rootfs.convert([image.reference], cache: try TestSupport.temporaryDirectory("cache"))
        let (_, tree) = try await Rootfs.tree(of: result.disk, in: dir)
        #expect(tree.nodes["/etc/written"]?.sha256 == SHA256Digest.of("inside\n").hex)
        #expect(tree.nodes["/up"]?.target == "etc/../..", "a symlink that points out is kept as it is; only writing through it is refused")

        let bare = try await ImageFixtures.singleLayer([.init(path: ".wh.", kind: .file(Data()))], in: dir, name: "bare")
        let cache = try TestSupport.temporaryDirectory("bare")
        let failure = try await Rootfs.failure([bare.reference], cache: cache)
        #expect(failure.code == "invalid-argument")
        #expect(failure.message.contains("a whiteout without a name"), "\(failure.message)")
        let dangling = try await ImageFixtures.singleLayer([.init(path: "link", kind: .hardlink("nowhere"))], in: dir, name: "dangling")
        let nowhere = try await Rootfs.failure([dangling.reference], cache: cache)
        #expect(nowhere.message.contains("which no layer up to this one has"), "\(nowhere.message)")
        Self.expectNothingCached(cache)
    }

    @Test("a blob with a wrong digest, a truncated gzip layer, unknown and non-distributable media types, schema 1: clear errors, nothing cached")
    func damagedImages() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let image = try await ImageFixtures.busyboxImage(in: dir)
        let layer = try #require((try ImageFixtures.manifest(image)["layers"] as? [[String: Any]])?.first)
        let layerDigest = layer["digest"] as! String
        let blobPath = ImageFixtures.blob(image.path, layerDigest)
        let original = try FileStore.readData(blobPath)

        // Same size, one byte changed, digest unchanged in the manifest.
        let changedLayout = dir + "/changed"
        try await ImageFixtures.run("cp", ["-a", image.path, changedLayout])
        var changed = original
        changed[changed.count / 2] ^= 0xff
        let changedBlob = ImageFixtures.blob(changedLayout, layerDigest)
        chmod(changedBlob, 0o644)
        try changed.write(to: URL(fileURLWithPath: changedBlob))
        let cache = try TestSupport.temporaryDirectory("cache")
        let mismatch = try await Rootfs.failure(["oci:\(changedLayout):v1"], cache: cache)
        #expect(mismatch.code == "digest-mismatch")
        #expect(mismatch.message.contains("layer 1 of 1 (\(layerDigest))"), "\(mismatch.message)")
        #expect(mismatch.message.contains("expected sha256 \(layerDigest.dropFirst(7))"), "\(mismatch.message)")
        #expect(mismatch.message.contains("found \(SHA256Digest.of(changed).hex)"), "\(mismatch.message)")
        #expect(!ContentStore(cacheDirectory: cache).contains(SHA256Digest.of(changed)))
        #expect(!ContentStore(cacheDirectory: cache).contains(SHA256Digest(hex: String(layerDigest.dropFirst(7)))!))
        Self.expectNothingCached(cache)

        // A gzip cut in half, with a manifest that names the cut bytes.
        let cut = original.prefix(original.count / 2)
        let cutBlob = try ImageFixtures.writeBlob(Data(cut), to: image.path)
        let truncated = try ImageFixtures.withLayers(image, as: "truncated") { layers in
            [layers[0].merging(["digest": cutBlob.digest, "size": cutBlob.size]) { $1 }]
        }
        let damaged = try await Rootfs.failure([truncated.reference], cache: cache)
        #expect(damaged.message.contains(cutBlob.digest), "the error names the layer: \(damaged.message)")
        #expect(damaged.message.lowercased().contains("truncated") || damaged.message.lowercased().contains("unexpected end"), "\(damaged.message)")
        #expect(RootfsCache(cacheDirectory: cache).list().isEmpty)

        let unknown = try ImageFixtures.withLayers(image, as: "unknown") { layers in
            [layers[0].merging(["mediaType": "application/vnd.example.layer.v1.squashfs"]) { $1 }]
        }
        let unknownFailure = try await Rootfs.failure([unknown.reference], cache: cache)
        #expect(unknownFailure.message.contains("unknown media type application/vnd.example.layer.v1.squashfs"), "\(unknownFailure.message)")
        let foreign = try ImageFixtures.withLayers(image, as: "foreign") { layers in
            [layers[0].merging(["mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"]) { $1 }]
        }
        let foreignFailure = try await Rootfs.failure([foreign.reference], cache: cache)
        #expect(foreignFailure.message.contains("non-distributable"), "\(foreignFailure.message)")

        let schema1 = try ImageFixtures.tag(
            ["schemaVersion": 1, "name": "old", "tag": "v1", "architecture": "amd64", "fsLayers": [["blobSum": layerDigest]]],
            mediaType: MediaType.dockerSchema1Signed, as: "schema1", in: image.path
        )
        let schema1Failure = try await Rootfs.failure([schema1.reference], cache: cache)
        #expect(schema1Failure.message.contains("schema 1"), "\(schema1Failure.message)")
        #expect(schema1Failure.hint.contains("skopeo copy --format v2s2"), "\(schema1Failure.hint)")
        #expect(RootfsCache(cacheDirectory: cache).list().isEmpty)
    }

    @Test("the cache: a hit, images (text and JSON), rm by key and by reference, a changed disk converted again, --output, --size, clean --images")
    func cacheAndItsCommands() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let image = try await ImageFixtures.busyboxImage(in: dir)
        let cache = try TestSupport.temporaryDirectory("cache")
        let first = await Rootfs.run([image.reference], cache: cache)
        #expect(first.stderr.contains("layer 1/1"), "per-layer progress: \(first.stderr)")
        let made = try JSONDecoder().decode(RootfsConverter.Result.self, from: Data(first.stdout.utf8))
        #expect(!made.cached)
        let hit = try await Rootfs.convert([image.reference], cache: cache)
        #expect(hit.cached && hit.disk == made.disk && hit.record.disk.sha256 == made.record.disk.sha256)
        let raw = try await Rootfs.convert([image.reference, "--disk-format", "raw", "--size", "64M"], cache: cache)
        #expect(raw.record.disk.virtualSize == 64 << 20)
        #expect(FileStore.fileSize(raw.disk) == 64 << 20)

        // qcow2's compression: zstd by default, zlib and none on request; the same file system in each.
        let info = try JSONSerialization.jsonObject(with: Data(try await ImageFixtures.run("qemu-img", ["info", "--output", "json", made.disk]).utf8)) as? [String: Any]
        #expect((info?["format-specific"] as? [String: Any]).flatMap { ($0["data"] as? [String: Any])?["compression-type"] as? String } == "zstd")
        let scratchCache = try TestSupport.temporaryDirectory("compression")
        for compression in ["zlib", "none"] {
            let other = try await Rootfs.convert([image.reference, "--qcow2-compression", compression], cache: scratchCache)
            #expect(other.record.disk.compression == compression)
            let compared = try await ImageFixtures.run("qemu-img", ["compare", made.disk, other.disk])
            #expect(compared.contains("Images are identical"), "\(compression): \(compared)")
        }
        #expect(await Rootfs.run([image.reference, "--disk-format", "raw", "--qcow2-compression", "zlib"], cache: scratchCache).status == 64)

        let listed = await TestSupport.runCommand(["images", "--cache-dir", cache, "--format", "json"])
        let listings = try JSONDecoder().decode([Images.Listing].self, from: Data(listed.stdout.utf8))
        #expect(listings.count == 2)
        #expect(listings.allSatisfy { $0.references == [image.reference] && $0.platform == "linux/amd64" && $0.manifestDigest == made.record.manifestDigest })
        #expect(Set(listings.map(\.diskSize)) == [FileStore.fileSize(made.disk)!, FileStore.fileSize(raw.disk)!])
        let text = await TestSupport.runCommand(["images", "--cache-dir", cache])
        #expect(text.stdout.contains(image.reference) && text.stdout.contains(String(made.record.manifestDigest.prefix(19))), "\(text.stdout)")

        let rawKey = try #require(listings.first { $0.format == "raw" }?.key)
        let removed = await TestSupport.runCommand(["images", "rm", String(rawKey.prefix(12)), "--cache-dir", cache])
        #expect(removed.status == 0, "\(removed.stderr)")
        #expect(!FileStore.exists(raw.disk))
        #expect(FileStore.exists(made.disk))
        let none = await TestSupport.runCommand(["images", "rm", "sha256:00000000deadbeef", "--cache-dir", cache])
        #expect(none.status == 1 && none.stderr.contains("no converted image matches"), "\(none.stderr)")

        // A disk changed in the cache is found out and made again.
        chmod(made.disk, 0o644)
        let fd = open(made.disk, O_WRONLY)
        #expect(pwrite(fd, "X", 1, 70_000) == 1)
        close(fd)
        let again = await Rootfs.run([image.reference], cache: cache)
        #expect(again.stderr.contains("changed since it was made"), "\(again.stderr)")
        let remade = try JSONDecoder().decode(RootfsConverter.Result.self, from: Data(again.stdout.utf8))
        #expect(!remade.cached && remade.record.disk.sha256 == made.record.disk.sha256)

        // --output: a writable copy, the same bytes; a raw copy stays sparse.
        let output = dir + "/out/root.qcow2"
        let placed = try await Rootfs.convert([image.reference, "--output", output], cache: cache)
        #expect(placed.output == output && placed.cached)
        #expect(try await TestSupport.sha256sum(output) == made.record.disk.sha256.hex)
        var st = stat()
        #expect(stat(output, &st) == 0 && st.st_mode & 0o777 == 0o644)
        let rawOutput = dir + "/out/root.raw"
        _ = try await Rootfs.convert([image.reference, "--disk-format", "raw", "--output", rawOutput], cache: cache)
        #expect(stat(rawOutput, &st) == 0 && Int64(st.st_blocks) * 512 < Int64(st.st_size) / 4, "sparse: \(st.st_blocks) blocks for \(st.st_size) bytes")

        let byReference = await TestSupport.runCommand(["images", "rm", image.reference, "--cache-dir", cache])
        #expect(byReference.status == 0)
        #expect(RootfsCache(cacheDirectory: cache).list().isEmpty)
        _ = try await Rootfs.convert([image.reference], cache: cache)
        let cleaned = await TestSupport.runCommand(["clean", "--images", "--cache-dir", cache])
        #expect(cleaned.status == 0, "\(cleaned.stderr)")
        #expect(!FileStore.exists(cache + "/rootfs") && !FileStore.exists(cache + "/oci"))

        // Too small a disk for the content: said so, with what to do.
        let large = try await ImageFixtures.singleLayer([.init(path: "zeros", kind: .file(Data(count: 12 << 20)))], in: dir, name: "large")
        let tooSmall = try await Rootfs.failure([large.reference, "--size", "8M"], cache: cache)
        #expect(tooSmall.message.contains("does not fit in a disk of 8.0 MiB"), "\(tooSmall.message)")
        #expect(tooSmall.hint.contains("larger --size"))
        Self.expectNothingCached(cache)
    }

    /// What this process has read through read(2) and its kin (`rchar` of /proc/self/io, every
    /// thread's, holes of sparse files included), so a test can tell whether a disk was read
    /// without a hook in the code it tests. Tests running beside it add their reads.
    static func bytesRead() throws -> Int64 {
        let io = try String(contentsOfFile: "/proc/self/io", encoding: .utf8)
        let line = try #require(io.split(separator: "\n").first { $0.hasPrefix("rchar:") })
        return try #require(Int64(line.dropFirst("rchar:".count).trimmingCharacters(in: .whitespaces)))
    }

    /// `vmfactory rootfs ARGUMENTS`, and how many bytes it read.
    static func convertReading(_ arguments: [String], cache: String) async throws -> (RootfsConverter.Result, Int64) {
        let before = try bytesRead()
        let result = try await Rootfs.convert(arguments, cache: cache)
        return (result, try bytesRead() - before)
    }

    @Test("a cached disk is read in full once: an unchanged one is then a hit without reading it, a touched one is read again and kept, one written with its mtime put back is refused")
    func verifiedOnce() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let image = try await ImageFixtures.busyboxImage(in: dir)
        let cache = try TestSupport.temporaryDirectory("cache")
        // A sparse 1 GiB raw disk: reading it all is what a hit must not do.
        let gib: Int64 = 1 << 30
        let arguments = [image.reference, "--disk-format", "raw", "--size", "1G"]
        let made = try await Rootfs.convert(arguments, cache: cache)
        #expect(!made.cached && FileStore.fileSize(made.disk) == gib)
        var st = stat()
        #expect(stat(made.disk, &st) == 0 && st.st_mode & 0o777 == 0o444, "the cached disk is read-only: \(String(st.st_mode & 0o777, radix: 8))")
        let entries = RootfsCache(cacheDirectory: cache)
        let folder = URL(fileURLWithPath: made.disk).deletingLastPathComponent().path
        #expect(entries.verifiedIdentity(folder) == FileIdentity.of(made.disk), "the conversion records the disk it checked")

        // An entry from before verified.json is read in full once, then trusted.
        try FileManager.default.removeItem(atPath: folder + "/" + RootfsCache.verifiedFile)
        var started = ContinuousClock.now
        let (checked, checkedBytes) = try await Self.convertReading(arguments, cache: cache)
        let checking = ContinuousClock.now - started
        #expect(checked.cached && checkedBytes >= gib, "read \(checkedBytes) bytes")
        #expect(entries.verifiedIdentity(folder) == FileIdentity.of(made.disk))
        started = ContinuousClock.now
        let (hit, hitBytes) = try await Self.convertReading(arguments, cache: cache)
        let hitting = ContinuousClock.now - started
        #expect(hit.cached && hit.disk == made.disk)
        #expect(hitBytes < gib / 2, "a hit read \(hitBytes) bytes in \(hitting) (the full check took \(checking))")

        // Touched: another identity, the same bytes; read again, kept, its new identity recorded.
        let old = try #require(FileIdentity.of(made.disk))
        try await ImageFixtures.run("touch", [made.disk])
        let (touched, touchedBytes) = try await Self.convertReading(arguments, cache: cache)
        #expect(touched.cached && touchedBytes >= gib, "read \(touchedBytes) bytes")
        let now = try #require(FileIdentity.of(made.disk))
        #expect(now != old && entries.verifiedIdentity(folder) == now)

        // Written in place, made read-only again and given back its mtime: the same size, mtime
        // and inode; only ctime tells, and the disk is refused.
        chmod(made.disk, 0o644)
        let fd = open(made.disk, O_RDWR)
        var byte: UInt8 = 0
        #expect(pread(fd, &byte, 1, 70_000) == 1)
        byte ^= 0xff
        #expect(pwrite(fd, &byte, 1, 70_000) == 1)
        close(fd)
        chmod(made.disk, 0o444)
        let mtime = "@\(now.modified / 1_000_000_000).\(String(format: "%09lld", now.modified % 1_000_000_000))"
        try await ImageFixtures.run("touch", ["-m", "-d", mtime, made.disk])
        let written = try #require(FileIdentity.of(made.disk))
        #expect(written.modified == now.modified && written.size == now.size && written.inode == now.inode && written.changed != now.changed, "\(written) against \(now)")
        let again = await Rootfs.run(arguments, cache: cache)
        #expect(again.stderr.contains("changed since it was made (from byte 0 on)"), "\(again.stderr)")
        let remade = try JSONDecoder().decode(RootfsConverter.Result.self, from: Data(again.stdout.utf8))
        #expect(!remade.cached && remade.record.disk.sha256 == made.record.disk.sha256)
        #expect(entries.verifiedIdentity(folder) == FileIdentity.of(remade.disk))
    }

    @Test("a conversion killed with SIGKILL leaves no entry and no child; the next run converts and removes what was left")
    func killedConversion() async throws {
        let dir = try TestSupport.temporaryDirectory()
        // Incompressible data (xorshift), so that writing it takes a while.
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        let entries: [ArchiveWriter.Entry] = (0..<3).map { index in
            var data = Data(count: 40 << 20)
            data.withUnsafeMutableBytes { bytes in
                for i in bytes.bindMemory(to: UInt64.self).indices {
                    state ^= state << 13
                    state ^= state >> 7
                    state ^= state << 17
                    bytes.storeBytes(of: state, toByteOffset: i * 8, as: UInt64.self)
                }
            }
            return .init(path: "data-\(index)", kind: .file(data))
        }
        let image = try await ImageFixtures.singleLayer(entries, in: dir, name: "big")
        let cache = try TestSupport.temporaryDirectory("cache")
        // vmfactory starts stopped (its shell stops itself, then execs it under the same pid),
        // so that nothing of the conversion happens before the watcher below has it in hand:
        // in a loaded suite the test's task resumed after the spawn only once a whole
        // conversion was over.
        let command = Command("/bin/sh", ["-c", "kill -STOP $$ && exec \"$0\" \"$@\"", TestSupport.executable, "rootfs", image.reference, "--cache-dir", cache])
        let log = dir + "/rootfs.log"
        let logFD = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        defer { close(logFD) }
        let child = try await ChildProcess.spawn(command, environment: command.environment(on: TestSupport.environment), stdout: .null, stderr: .descriptor(logFD))
        let rootfs = cache + "/rootfs"
        // Killed while layer data goes into the disk: more blocks written than mke2fs writes.
        // The wait is long (a debug build on a host busy with kernel builds reads the 120 MiB
        // layer slowly) and ends early if the conversion ends by itself. vmfactory runs in
        // steps of 10 ms between SIGCONT and SIGSTOP, driven from a thread of its own, and its
        // disk is looked at while it is stopped: a poll beside a running conversion missed the
        // whole write on a loaded host.
        let begun = ContinuousClock.now
        let writing: Bool = await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                func disk() -> Int64? {
                    for name in TestSupport.files(under: rootfs) where name.contains(".partial/disk.raw") {
                        var st = stat()
                        if stat(rootfs + "/" + name, &st) == 0 { return Int64(st.st_blocks) * 512 }
                    }
                    return nil
                }
                // "pid (comm) S …": the state after the command's closing parenthesis.
                func stopped() -> Bool {
                    let stat = (try? String(contentsOfFile: "/proc/\(child.pid)/stat", encoding: .utf8)) ?? ""
                    return stat.range(of: ") ", options: .backwards).map { stat[$0.upperBound...].hasPrefix("T") } ?? false
                }
                while !stopped(), !child.hasExited, ContinuousClock.now - begun < .seconds(30) { usleep(1_000) }
                while ContinuousClock.now - begun < .seconds(300), !child.hasExited {
                    if let written = disk(), written > 16 << 20 {
                        kill(child.pid, SIGKILL)
                        continuation.resume(returning: true)
                        return
                    }
                    kill(child.pid, SIGCONT)
                    usleep(10_000)
                    // Once reaped, its pid may be another process's (another suite's QEMU).
                    if child.hasExited { break }
                    kill(child.pid, SIGSTOP)
                    while !stopped(), !child.hasExited { usleep(500) }
                }
                continuation.resume(returning: false)
            }
        }
        try #require(writing, "the conversion did not start writing the disk (after \(ContinuousClock.now - begun), exited: \(child.hasExited)): \((try? FileStore.readText(log)) ?? "")")
        _ = await child.wait()
        // mke2fs and qemu-img get their parent-death signal; give the kernel a moment.
        var survivors = ""
        for _ in 0..<50 {
            survivors = try await TestSupport.runner.run(Command("pgrep", ["-fa", cache]), output: .capture).output
            if survivors.isEmpty { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(survivors.isEmpty, "children outlived vmfactory: \(survivors)")
        #expect(RootfsCache(cacheDirectory: cache).list().isEmpty, "a killed conversion is no entry")

        let result = try await Rootfs.convert([image.reference], cache: cache)
        #expect(!result.cached)
        let left = TestSupport.files(under: cache).filter { $0.hasSuffix(".partial") || $0.contains(".partial/") }
        #expect(left.isEmpty, "leftovers: \(left)")
        let (_, tree) = try await Rootfs.tree(of: result.disk, in: dir)
        #expect(tree.nodes["/data-2"]?.size == 40 << 20)
    }
}
