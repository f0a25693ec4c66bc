import Foundation
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryCore
@testable import VMFactoryImage

extension Trait where Self == ConditionTrait {
    /// umoci makes device nodes and other users' files in a bundle only as root.
    static var needsRoot: Self {
        .enabled(if: TestSupport.isCI || ImageFixtures.isRoot, "needs root, for umoci to make device nodes and files of other owners")
    }
}

/// Shared by the rootfs suites: running `vmfactory rootfs` in-process and reading its answer.
enum Rootfs {
    static func run(_ arguments: [String], cache: String, environment: [String: String] = [:]) async -> TestSupport.Run {
        await TestSupport.runCommand(["rootfs"] + arguments + ["--cache-dir", cache, "--format", "json"], runner: TestSupport.runner, environment: environment)
    }

    static func convert(_ arguments: [String], cache: String, environment: [String: String] = [:]) async throws -> RootfsConverter.Result {
        let run = await run(arguments, cache: cache, environment: environment)
        try #require(run.status == 0, "vmfactory rootfs \(arguments) failed: \(run.stdout) \(run.stderr)")
        return try JSONDecoder().decode(RootfsConverter.Result.self, from: Data(run.stdout.utf8))
    }

    /// The error of a failed run under --format json.
    static func failure(_ arguments: [String], cache: String, environment: [String: String] = [:]) async throws -> (code: String, message: String, hint: String) {
        let run = await run(arguments, cache: cache, environment: environment)
        try #require(run.status == 1, "expected a failure: \(run.stdout) \(run.stderr)")
        let payload = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: [String: Any]])
        let error = try #require(payload["error"])
        return (error["code"] as? String ?? "", error["message"] as? String ?? "", error["hint"] as? String ?? "")
    }

    /// Compares two trees path by path, naming each difference.
    static func expectSame(_ disk: Tree, _ expected: Tree, comparingDirectoryTimes: Bool = true, sourceLocation: SourceLocation = #_sourceLocation) {
        for path in Set(disk.nodes.keys).union(expected.nodes.keys).sorted() {
            var got = disk.nodes[path]
            var want = expected.nodes[path]
            if !comparingDirectoryTimes, got?.type == "d" { got?.mtime = nil; want?.mtime = nil }
            #expect(got == want, "\(path): the disk has \(got.map(\.description) ?? "nothing"), expected \(want.map(\.description) ?? "nothing")", sourceLocation: sourceLocation)
        }
        #expect(disk.linkGroups == expected.linkGroups, "hard links", sourceLocation: sourceLocation)
    }

    /// What umoci itself unpacks of the image, read with lstat.
    static func unpacked(_ layout: ImageFixtures.Layout, in directory: String) async throws -> Tree {
        let bundle = directory + "/umoci-\(UUID().uuidString.prefix(8))"
        try await ImageFixtures.umoci(["unpack", "--keep-dirlinks", "--image", layout.umociImage, bundle])
        return try HostTree.read(bundle + "/rootfs")
    }

    static func tree(of disk: String, in directory: String) async throws -> (DiskInspector, Tree) {
        let inspector = try await DiskInspector.open(disk, scratch: directory)
        let fsck = try await inspector.fsck()
        #expect(fsck.status == 0, "e2fsck -fn: \(fsck.output)")
        let dump = directory + "/dump-\(UUID().uuidString.prefix(8))"
        try FileStore.createDirectory(dump)
        return (inspector, try await inspector.tree(scratch: dump))
    }
}

@Suite(
    "vmfactory rootfs: OCI layers applied as the image spec says, read back with debugfs",
    .tags(.integration), .scoped, .needsRoot,
    .needsTool("umoci"), .needsTool("debugfs"), .needsTool("qemu-img"), .needsTool("setcap")
)
struct RootfsLayerIntegrationTests {
    @Test("whiteouts, opaque folders, hard links, owners, modes, devices, capabilities and symlinks as umoci unpacks them; fsck clean")
    func layersAsUmociUnpacksThem() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let image = try await ImageFixtures.richImage(in: dir)
        let result = try await Rootfs.convert([image.reference], cache: try TestSupport.temporaryDirectory("cache"))
        #expect(!result.cached)
        #expect(result.record.platform == "linux/amd64")
        #expect(result.record.manifestDigest == (try ImageFixtures.manifestDescriptor(image)["digest"] as? String))
        #expect(try await TestSupport.sha256sum(result.disk) == result.record.disk.sha256.hex)
        #expect(result.disk.hasSuffix("/disk.qcow2"))

        let (disk, tree) = try await Rootfs.tree(of: result.disk, in: dir)
        let unpacked = try await Rootfs.unpacked(image, in: dir)
        #expect(unpacked.nodes.count == 28, "umoci unpacked \(unpacked.nodes.keys.sorted())")
        Rootfs.expectSame(tree, unpacked)

        // The rules themselves, independently of umoci.
        for gone in ["/gone", "/lower", "/opaque/sub", "/opaque/keep-lower", "/etc/one-link"] {
            #expect(tree.nodes[gone] == nil, "\(gone) should be whited out")
        }
        #expect(tree.nodes["/opaque/before"]?.type == "-", "a file before the opaque whiteout in its own layer stays")
        #expect(tree.nodes["/opaque/after"]?.type == "-")
        #expect(tree.nodes["/etc/one"]?.mtime == 981_173_106)
        #expect(try await disk.stat("/etc/one")?.links == 1)
        #expect(tree.linkGroups.contains(["/hard-to-lower", "/linked-lower"]), "a hard link to a file of a lower layer")
        #expect(try await disk.stat("/linked-lower")?.links == 2)
        #expect(tree.nodes["/lib"]?.target == "usr/lib")
        #expect(tree.nodes["/usr/lib/through-symlink"]?.sha256 == SHA256Digest.of("through\n").hex)
        #expect(tree.nodes["/usr/bin/suid"]?.permissions == 0o4755)
        #expect(tree.nodes["/owned"].map { ($0.uid, $0.gid, $0.permissions) } ?? (0, 0, 0) == (1234, 5678, 0o640))
        #expect(tree.nodes["/dev/null2"].map { "\($0.type) \($0.device ?? "")" } == "c 01:03")
        #expect(tree.nodes["/dev/sda1"].map { "\($0.type) \($0.device ?? "")" } == "b 08:01")
        #expect(tree.nodes["/fifo"]?.type == "p")
        #expect(tree.nodes["/usr/bin/ping"]?.xattrs["security.capability"] == "0100000200200000000000000000000000000000")
        #expect(tree.nodes["/sticky"]?.permissions == 0o1777)
        #expect(tree.nodes["/file-to-dir"]?.type == "d" && tree.nodes["/file-to-dir/x"] != nil)
        #expect(tree.nodes["/dir-to-file"]?.type == "-" && tree.nodes["/dir-to-file/inner"] == nil)
        #expect(tree.nodes["/etc/sh"]?.target == "../bin/busybox")

        // image.json beside the disk: the config the image carries.
        let folder = URL(fileURLWithPath: result.disk).deletingLastPathComponent().path
        let record = try JSONDecoder().decode(RootfsRecord.self, from: try FileStore.readData(folder + "/image.json"))
        #expect(record == result.record)
        let config = record.config
        #expect(config.Entrypoint == ["/bin/sh"])
        #expect(config.Cmd == ["-c", "echo hello"])
        #expect(config.Env == ["PATH=/usr/bin:/bin", "GREETING=two words"])
        #expect(config.WorkingDir == "/etc")
        #expect(config.User == "1234:5678")
        #expect(config.ExposedPorts?.keys.sorted() == ["8080/tcp"])
        #expect(config.Volumes?.keys.sorted() == ["/data"])
        #expect(config.Labels == ["org.example.kind": "rich"])
        #expect(config.StopSignal == "SIGINT")
        #expect(record.disk.sha256.hex == (try await TestSupport.sha256sum(folder + "/disk.qcow2")))
    }

    @Test("the same image gives the same disk bytes: in fresh caches, as root and as nobody (setpriv), qcow2 and raw")
    func reproducibleForEveryUser() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let image = try await ImageFixtures.richImage(in: dir)
        let first = try await Rootfs.convert([image.reference], cache: try TestSupport.temporaryDirectory("one"))
        let second = try await Rootfs.convert([image.reference], cache: try TestSupport.temporaryDirectory("two"))
        #expect(!second.cached)
        #expect(try await TestSupport.sha256sum(first.disk) == (try await TestSupport.sha256sum(second.disk)))

        // As nobody: a copy of the executable and the layout everybody can read, a cache of its own.
        try await ImageFixtures.shareWithEveryone(dir)
        let bin = try TestSupport.temporaryDirectory("bin")
        // Both executables: vmfactory runs every command but exec through vmfactory-cli beside it.
        try await ImageFixtures.run("install", ["-m", "0755", TestSupport.executable, bin + "/vmfactory"])
        try await ImageFixtures.run("install", ["-m", "0755", TestSupport.executable + "-cli", bin + "/vmfactory-cli"])
        let nobodyCache = try TestSupport.temporaryDirectory("nobody")
        try await ImageFixtures.run("chown", ["65534:65534", nobodyCache])
        for format in ["qcow2", "raw"] {
            let command = Command("setpriv", [
                "--reuid=65534", "--regid=65534", "--clear-groups", "--", bin + "/vmfactory", "rootfs", image.reference,
                "--disk-format", format, "--cache-dir", nobodyCache, "--format", "json",
            ])
            let run = try await TestSupport.runner.run(command, output: .stdoutApart)
            try #require(run.succeeded, "as nobody: \(run.errorOutput)")
            let asNobody = try JSONDecoder().decode(RootfsConverter.Result.self, from: Data(run.output.utf8))
            let asRoot = format == "qcow2" ? first : try await Rootfs.convert([image.reference, "--disk-format", "raw"], cache: try TestSupport.temporaryDirectory("raw"))
            var st = stat()
            #expect(lstat(asNobody.disk, &st) == 0 && st.st_uid == 65534, "nobody made the file")
            #expect(try await TestSupport.sha256sum(asNobody.disk) == (try await TestSupport.sha256sum(asRoot.disk)), "\(format): nobody's disk is root's, byte for byte")
            #expect(asNobody.record.disk.sha256 == asRoot.record.disk.sha256)
        }
    }
}
