import Foundation
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryCore
@testable import VMFactoryImage

/// Container images made during the test by independent tools: umoci for OCI layouts and
/// layers from real folders, skopeo for the other transports, Debian's docker-registry for
/// registries. Layers that only a hand can write (an opaque whiteout in the middle of a layer,
/// hostile entries) are tars that the test writes and umoci adds verbatim.
enum ImageFixtures {
    /// An image in an OCI layout: `oci:PATH:TAG`.
    struct Layout: Sendable {
        var path: String
        var tag: String
        var reference: String { "oci:\(path):\(tag)" }
        var umociImage: String { "\(path):\(tag)" }
    }

    static let isRoot = getuid() == 0

    @discardableResult
    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:], in directory: String? = nil) async throws -> String {
        let command = Command(executable, arguments, environment: environment, workingDirectory: directory)
        return try await TestSupport.runner.runChecked(command, what: "\(executable) \(arguments.first ?? "")").output
    }

    static func umoci(_ arguments: [String]) async throws {
        try await run("umoci", arguments)
    }

    /// An empty image `tag` in a new layout at `path`, with a fixed creation time.
    static func newLayout(_ path: String, tag: String, architecture: String = "amd64") async throws -> Layout {
        try await umoci(["init", "--layout", path])
        try await umoci(["new", "--image", "\(path):\(tag)"])
        try await umoci(["config", "--image", "\(path):\(tag)", "--architecture", architecture, "--os", "linux", "--created", "2024-05-06T07:08:09Z", "--no-history"])
        return Layout(path: path, tag: tag)
    }

    /// Adds `entries`, as a tar the test writes, as the image's next layer (umoci gzips it).
    static func addLayer(_ entries: [ArchiveWriter.Entry], to layout: Layout, scratch: String) async throws {
        let tar = scratch + "/layer-\(UUID().uuidString.prefix(8)).tar"
        try ArchiveWriter.write(entries, to: tar, format: .paxTar)
        try await umoci(["raw", "add-layer", "--no-history", "--image", layout.umociImage, tar])
    }

    /// Unpacks the image into a bundle, lets `change` edit its rootfs, and repacks it: umoci
    /// writes the difference as the next layer, whiteouts included.
    static func editLayer(_ layout: Layout, scratch: String, _ change: (_ rootfs: String) async throws -> Void) async throws {
        let bundle = scratch + "/bundle-\(UUID().uuidString.prefix(8))"
        try await umoci(["unpack", "--keep-dirlinks"] + (isRoot ? [] : ["--rootless"]) + ["--image", layout.umociImage, bundle])
        try await change(bundle + "/rootfs")
        try await umoci(["repack", "--no-history", "--image", layout.umociImage, bundle])
        try await run("rm", ["-rf", bundle])
    }

    /// Lets every user read the layout (umoci writes its blobs for the owner only).
    static func shareWithEveryone(_ path: String) async throws {
        try await run("chmod", ["-R", "a+rX", path])
    }

    /// The image with everything the OCI layer rules cover, in three layers:
    /// 1. (umoci) busybox, a hard link pair, folders and files that later layers remove,
    ///    replace or hide, and `lib` as a symlink to `usr/lib`;
    /// 2. (umoci, as root) whiteouts of a folder and a file, a setuid file, a file of
    ///    1234:5678, a character and a block device, a FIFO, a file capability, a sticky
    ///    folder, a file replaced by a folder and the other way round, a pinned mtime;
    /// 3. (written here) an opaque whiteout between two files of its own layer, a hard link
    ///    to a file of layer 1, a file written through the symlink `lib`, a whiteout of one
    ///    name of the hard link pair.
    static func richImage(in directory: String) async throws -> Layout {
        let layout = try await newLayout(directory + "/rich", tag: "v1")
        let scratch = try TestSupport.temporaryDirectory("scratch")
        try await editLayer(layout, scratch: scratch) { root in
            for folder in ["bin", "etc", "gone/deeper", "opaque/sub", "usr/lib", "dir-to-file/inner", "sticky"] {
                try FileStore.createDirectory(root + "/" + folder)
            }
            try await run("cp", ["/bin/busybox", root + "/bin/busybox"])
            try FileManager.default.createSymbolicLink(atPath: root + "/bin/sh", withDestinationPath: "busybox")
            try FileManager.default.createSymbolicLink(atPath: root + "/lib", withDestinationPath: "usr/lib")
            try TestSupport.write("one\n", to: root + "/etc/one")
            try FileManager.default.linkItem(atPath: root + "/etc/one", toPath: root + "/etc/one-link")
            try TestSupport.write("gone\n", to: root + "/gone/deeper/file")
            try TestSupport.write("lower\n", to: root + "/lower")
            try TestSupport.write("old\n", to: root + "/opaque/sub/old")
            try TestSupport.write("hidden\n", to: root + "/opaque/keep-lower")
            try TestSupport.write("was a file\n", to: root + "/file-to-dir")
            try TestSupport.write("inner\n", to: root + "/dir-to-file/inner/x")
            try TestSupport.write("shared\n", to: root + "/linked-lower")
        }
        try await editLayer(layout, scratch: scratch) { root in
            try await run("rm", ["-rf", root + "/gone", root + "/lower", root + "/file-to-dir", root + "/dir-to-file"])
            try FileStore.createDirectory(root + "/file-to-dir")
            try TestSupport.write("now a folder\n", to: root + "/file-to-dir/x")
            try TestSupport.write("now a file\n", to: root + "/dir-to-file")
            try FileStore.createDirectory(root + "/usr/bin")
            try TestSupport.write("#!/bin/sh\n", to: root + "/usr/bin/suid", mode: 0o755)
            chmod(root + "/usr/bin/suid", 0o4755)
            try TestSupport.write("owned\n", to: root + "/owned", mode: 0o640)
            try await run("chown", ["1234:5678", root + "/owned"])
            try FileStore.createDirectory(root + "/dev")
            try await run("mknod", ["-m", "0666", root + "/dev/null2", "c", "1", "3"])
            try await run("mknod", ["-m", "0660", root + "/dev/sda1", "b", "8", "1"])
            try await run("mkfifo", ["-m", "0600", root + "/fifo"])
            try await run("cp", ["/bin/busybox", root + "/usr/bin/ping"])
            try await run("setcap", ["cap_net_raw+ep", root + "/usr/bin/ping"])
            try FileManager.default.createSymbolicLink(atPath: root + "/etc/sh", withDestinationPath: "../bin/busybox")
            chmod(root + "/sticky", 0o1777)
            try await run("touch", ["-h", "-d", "2001-02-03 04:05:06 UTC", root + "/etc/one"])
        }
        try await addLayer([
            .init(path: "opaque/", kind: .directory, mode: 0o755, mtime: 1_700_000_000),
            .init(path: "opaque/before", kind: .file(Data("before\n".utf8)), mtime: 1_700_000_000),
            .init(path: "opaque/.wh..wh..opq", kind: .file(Data()), mode: 0, mtime: 0),
            .init(path: "opaque/after", kind: .file(Data("after\n".utf8)), mtime: 1_700_000_000),
            .init(path: "hard-to-lower", kind: .hardlink("linked-lower")),
            .init(path: "lib/through-symlink", kind: .file(Data("through\n".utf8)), mtime: 1_700_000_000),
            .init(path: "etc/.wh.one-link", kind: .file(Data()), mode: 0),
        ], to: layout, scratch: scratch)
        try await umoci([
            "config", "--no-history", "--image", layout.umociImage,
            "--config.entrypoint", "/bin/sh", "--config.cmd", "-c", "--config.cmd", "echo hello",
            "--config.env", "PATH=/usr/bin:/bin", "--config.env", "GREETING=two words",
            "--config.workingdir", "/etc", "--config.user", "1234:5678", "--config.exposedports", "8080/tcp",
            "--config.volume", "/data", "--config.label", "org.example.kind=rich", "--config.stopsignal", "SIGINT",
        ])
        return layout
    }

    /// A one-layer image of `entries` (the test writes the tar; umoci adds it).
    static func singleLayer(_ entries: [ArchiveWriter.Entry], in directory: String, name: String = "single", architecture: String = "amd64") async throws -> Layout {
        let layout = try await newLayout(directory + "/" + name, tag: "v1", architecture: architecture)
        try await addLayer(entries, to: layout, scratch: try TestSupport.temporaryDirectory("scratch"))
        return layout
    }

    /// A small image: busybox and a config that runs it.
    static func busyboxImage(in directory: String) async throws -> Layout {
        let busybox = try FileStore.readData("/bin/busybox")
        return try await singleLayer([
            .init(path: "bin/", kind: .directory, mode: 0o755),
            .init(path: "bin/busybox", kind: .file(busybox), mode: 0o755),
            .init(path: "bin/sh", kind: .symlink("busybox"), mode: 0o777),
            .init(path: "etc/", kind: .directory, mode: 0o755),
            .init(path: "etc/hostname", kind: .file(Data("box\n".utf8))),
        ], in: directory, name: "busybox")
    }

    // MARK: Reading and rewriting a layout

    static func index(_ path: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: try FileStore.readData(path + "/index.json")) as! [String: Any]
    }

    static func blob(_ layout: String, _ digest: String) -> String {
        layout + "/blobs/sha256/" + digest.replacingOccurrences(of: "sha256:", with: "")
    }

    /// The manifest descriptor `tag` names in the layout's index.json.
    static func manifestDescriptor(_ layout: Layout) throws -> [String: Any] {
        let manifests = try index(layout.path)["manifests"] as! [[String: Any]]
        return manifests.first { ($0["annotations"] as? [String: String])?["org.opencontainers.image.ref.name"] == layout.tag }!
    }

    static func manifest(_ layout: Layout) throws -> [String: Any] {
        let digest = try manifestDescriptor(layout)["digest"] as! String
        return try JSONSerialization.jsonObject(with: try FileStore.readData(blob(layout.path, digest))) as! [String: Any]
    }

    /// Writes `data` as a blob of the layout; returns its descriptor's digest and size.
    static func writeBlob(_ data: Data, to layout: String) throws -> (digest: String, size: Int) {
        let digest = "sha256:" + SHA256Digest.of(data).hex
        try data.write(to: URL(fileURLWithPath: blob(layout, digest)))
        return (digest, data.count)
    }

    /// Adds `document` (a manifest or an index) to the layout as the image `tag`.
    static func tag(_ document: [String: Any], mediaType: String, as tag: String, in layout: String, platform: [String: String]? = nil) throws -> Layout {
        let data = try JSONSerialization.data(withJSONObject: document, options: [.sortedKeys])
        let (digest, size) = try writeBlob(data, to: layout)
        var index = try self.index(layout)
        var manifests = index["manifests"] as! [[String: Any]]
        var descriptor: [String: Any] = [
            "mediaType": mediaType, "digest": digest, "size": size,
            "annotations": ["org.opencontainers.image.ref.name": tag],
        ]
        if let platform { descriptor["platform"] = platform }
        manifests.append(descriptor)
        index["manifests"] = manifests
        try JSONSerialization.data(withJSONObject: index, options: [.sortedKeys]).write(to: URL(fileURLWithPath: layout + "/index.json"))
        return Layout(path: layout, tag: tag)
    }

    /// A copy of the image's manifest with `change` applied to its layer descriptors, tagged `tag`.
    static func withLayers(_ layout: Layout, as tag: String, _ change: ([[String: Any]]) throws -> [[String: Any]]) throws -> Layout {
        var manifest = try self.manifest(layout)
        manifest["layers"] = try change(manifest["layers"] as! [[String: Any]])
        return try self.tag(manifest, mediaType: MediaType.ociManifest, as: tag, in: layout.path)
    }
}

/// Debian's docker-registry on 127.0.0.1, with basic auth when asked, stopped with the test.
final class LocalRegistry: @unchecked Sendable {
    let port: UInt16
    let process: ChildProcess
    static let user = "tester"
    static let password = "s3cret-pass"

    var host: String { "127.0.0.1:\(port)" }

    private init(port: UInt16, process: ChildProcess) {
        self.port = port
        self.process = process
    }

    static func start(in directory: String, authenticated: Bool) async throws -> LocalRegistry {
        let port = try freePort()
        var config = """
            version: 0.1
            log:
              level: error
            storage:
              filesystem:
                rootdirectory: \(directory)/storage
            http:
              addr: 127.0.0.1:\(port)

            """
        if authenticated {
            let line = try await ImageFixtures.run("htpasswd", ["-Bbn", user, password])
            try TestSupport.write(line, to: directory + "/htpasswd")
            config += """
                auth:
                  htpasswd:
                    realm: vmfactory-tests
                    path: \(directory)/htpasswd

                """
        }
        try TestSupport.write(config, to: directory + "/config.yml")
        let command = Command("docker-registry", ["serve", directory + "/config.yml"])
        let child = try await ChildProcess.spawn(command, environment: command.environment(on: TestSupport.environment), stdout: .null, stderr: .null)
        let registry = LocalRegistry(port: port, process: child)
        guard await TestSupport.eventually(within: 15, { canConnect(port) }) else {
            registry.stop()
            throw VMFactoryError(.internalError, "docker-registry did not listen on 127.0.0.1:\(port)")
        }
        return registry
    }

    func stop() {
        process.terminate(grace: .seconds(2))
    }

    /// A port nothing listens on (bound and released).
    static func freePort() throws -> UInt16 {
        let (fd, port) = try boundSocket(listening: false)
        close(fd)
        return port
    }

    /// A socket on 127.0.0.1 that listens and never accepts: connections complete, no byte
    /// ever comes. The caller closes it.
    static func listeningSocket() throws -> (fd: Int32, port: UInt16) {
        try boundSocket(listening: true)
    }

    private static func boundSocket(listening: Bool) throws -> (fd: Int32, port: UInt16) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && (!listening || listen(fd, 64) == 0) && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else {
            close(fd)
            throw POSIXError(.EADDRINUSE)
        }
        return (fd, UInt16(bigEndian: address.sin_port))
    }

    static func canConnect(_ port: UInt16) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}
