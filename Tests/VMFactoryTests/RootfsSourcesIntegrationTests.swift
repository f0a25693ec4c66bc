import Foundation
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryCore
@testable import VMFactoryImage

@Suite(
    "vmfactory rootfs: every transport lands in the content store and gives the same tree",
    .tags(.integration), .scoped, .needsRoot,
    .needsTool("umoci"), .needsTool("skopeo"), .needsTool("debugfs"), .needsTool("qemu-img"), .needsTool("setcap")
)
struct RootfsSourcesIntegrationTests {
    @Test("oci-archive (the same disk bytes), docker-archive, the older repositories form and a tar with --config: the tree umoci unpacks")
    func archivesAndTarballs() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let image = try await ImageFixtures.richImage(in: dir)
        let expected = try await Rootfs.unpacked(image, in: dir)
        let fromLayout = try await Rootfs.convert([image.reference], cache: try TestSupport.temporaryDirectory("layout"))

        let ociArchive = dir + "/rich.oci.tar"
        try await ImageFixtures.run("skopeo", ["copy", "--quiet", image.reference, "oci-archive:\(ociArchive):v1"])
        let fromOCIArchive = try await Rootfs.convert(["oci-archive:\(ociArchive):v1"], cache: try TestSupport.temporaryDirectory("ociarchive"))
        #expect(fromOCIArchive.record.manifestDigest == fromLayout.record.manifestDigest)
        #expect(fromOCIArchive.record.disk.sha256 == fromLayout.record.disk.sha256, "the same manifest gives the same disk")

        let dockerArchive = dir + "/rich.docker.tar"
        try await ImageFixtures.run("skopeo", ["copy", "--quiet", image.reference, "docker-archive:\(dockerArchive):rich:v1"])
        let fromDocker = try await Rootfs.convert(["docker-archive:\(dockerArchive):rich:v1"], cache: try TestSupport.temporaryDirectory("docker"))
        Rootfs.expectSame(try await Rootfs.tree(of: fromDocker.disk, in: dir).1, expected)
        #expect(fromDocker.record.config.Cmd == ["-c", "echo hello"])
        // Without a name: the archive's only image.
        let unnamed = try await Rootfs.convert(["docker-archive:\(dockerArchive)"], cache: try TestSupport.temporaryDirectory("docker2"))
        #expect(unnamed.record.disk.sha256 == fromDocker.record.disk.sha256)

        let legacy = try await Self.legacyArchive(from: dockerArchive, in: dir)
        let fromLegacy = try await Rootfs.convert(["docker-archive:\(legacy):rich:v1"], cache: try TestSupport.temporaryDirectory("legacy"))
        Rootfs.expectSame(try await Rootfs.tree(of: fromLegacy.disk, in: dir).1, expected)

        // A root file system tarball from GNU tar, with the config given beside.
        let rootfs = dir + "/tarball"
        try await ImageFixtures.umoci(["unpack", "--keep-dirlinks", "--image", image.umociImage, rootfs])
        let tarball = dir + "/rootfs.tar"
        try await ImageFixtures.run("tar", ["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", rootfs + "/rootfs", "-cpf", tarball, "."])
        try TestSupport.write(#"{"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"], "Env": ["A=1"], "WorkingDir": "/srv"}}"#, to: dir + "/config.json")
        let fromTar = try await Rootfs.convert(["tar:\(tarball)", "--config", dir + "/config.json"], cache: try TestSupport.temporaryDirectory("tar"))
        Rootfs.expectSame(try await Rootfs.tree(of: fromTar.disk, in: dir).1, expected)
        #expect(fromTar.record.config.Cmd == ["/bin/sh"])
        #expect(fromTar.record.config.Env == ["A=1"])
        #expect(fromTar.record.config.WorkingDir == "/srv")
        #expect(fromTar.record.platform == "linux/amd64")
    }

    /// The form Docker wrote before 1.10: `repositories` and a folder per layer whose `json`
    /// names its parent; the top layer's json is the image config. Made here from the layers
    /// skopeo wrote.
    static func legacyArchive(from archive: String, in directory: String) async throws -> String {
        let modern = directory + "/modern"
        try FileStore.createDirectory(modern)
        try await ImageFixtures.run("tar", ["-xf", archive, "-C", modern])
        let manifest = try #require(try JSONSerialization.jsonObject(with: try FileStore.readData(modern + "/manifest.json")) as? [[String: Any]]).first!
        let layers = manifest["Layers"] as! [String]
        var config = try JSONSerialization.jsonObject(with: try FileStore.readData(modern + "/" + (manifest["Config"] as! String))) as! [String: Any]
        let old = directory + "/old"
        var parent: String?
        for (index, layer) in layers.enumerated() {
            let id = SHA256Digest.of("layer \(index) \(layer)").hex
            try FileStore.createDirectory(old + "/" + id)
            try FileStore.copy(modern + "/" + layer, to: old + "/" + id + "/layer.tar")
            var json: [String: Any] = ["id": id]
            if let parent { json["parent"] = parent }
            if index == layers.count - 1 {
                config.removeValue(forKey: "rootfs")
                json.merge(config) { current, _ in current }
            }
            try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: old + "/" + id + "/json"))
            parent = id
        }
        try JSONSerialization.data(withJSONObject: ["rich": ["v1": parent!]]).write(to: URL(fileURLWithPath: old + "/repositories"))
        let path = directory + "/legacy.tar"
        try await ImageFixtures.run("tar", ["-C", old, "-cf", path, "."])
        return path
    }

    @Test("docker:// through skopeo from Debian's docker-registry: plain, with basic auth (--creds, REGISTRY_AUTH_FILE), refused credentials, a registry that is down")
    func registries() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let image = try await ImageFixtures.richImage(in: dir)
        let fromLayout = try await Rootfs.convert([image.reference], cache: try TestSupport.temporaryDirectory("layout"))

        let plain = try await LocalRegistry.start(in: try TestSupport.temporaryDirectory("plain"), authenticated: false)
        defer { plain.stop() }
        try await ImageFixtures.run("skopeo", ["copy", "--quiet", "--dest-tls-verify=false", image.reference, "docker://\(plain.host)/tests/rich:v1"])
        let cache = try TestSupport.temporaryDirectory("plaincache")
        let pulled = try await Rootfs.convert(["docker://\(plain.host)/tests/rich:v1", "--tls-verify=false"], cache: cache)
        #expect(pulled.record.manifestDigest == fromLayout.record.manifestDigest)
        #expect(pulled.record.disk.sha256 == fromLayout.record.disk.sha256, "the registry's copy is the layout's image, so its disk too")
        // Again: the manifest is asked for, the layers are not copied, the disk is a hit.
        let again = try await Rootfs.convert(["docker://\(plain.host)/tests/rich@\(pulled.record.manifestDigest)", "--tls-verify=false"], cache: cache)
        #expect(again.cached)
        // Without --tls-verify=false, skopeo speaks https to a plain registry.
        let tls = try await Rootfs.failure(["docker://\(plain.host)/tests/rich:v1"], cache: cache)
        #expect(tls.code == "fetch-failed")
        #expect(tls.hint.contains("--tls-verify=false"), "\(tls)")
        let missing = try await Rootfs.failure(["docker://\(plain.host)/tests/absent:v1", "--tls-verify=false"], cache: cache)
        #expect(missing.hint.contains("no such image"), "\(missing)")

        let guarded = try await LocalRegistry.start(in: try TestSupport.temporaryDirectory("auth"), authenticated: true)
        defer { guarded.stop() }
        let creds = "\(LocalRegistry.user):\(LocalRegistry.password)"
        try await ImageFixtures.run("skopeo", ["copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", creds, image.reference, "docker://\(guarded.host)/tests/rich:v1"])
        let reference = "docker://\(guarded.host)/tests/rich:v1"
        let refused = try await Rootfs.failure([reference, "--tls-verify=false"], cache: try TestSupport.temporaryDirectory("noauth"))
        #expect(refused.code == "fetch-failed")
        #expect(refused.hint.contains("--creds"), "\(refused)")
        let wrong = try await Rootfs.failure([reference, "--tls-verify=false", "--creds", "\(LocalRegistry.user):wrong"], cache: try TestSupport.temporaryDirectory("wrong"))
        #expect(wrong.hint.contains("refused the credentials"), "\(wrong)")
        let withCreds = try await Rootfs.convert([reference, "--tls-verify=false", "--creds", creds], cache: try TestSupport.temporaryDirectory("creds"))
        #expect(withCreds.record.disk.sha256 == fromLayout.record.disk.sha256)
        let authFile = dir + "/auth.json"
        let token = Data(creds.utf8).base64EncodedString()
        try TestSupport.write(#"{"auths": {"\#(guarded.host)": {"auth": "\#(token)"}}}"#, to: authFile)
        let withFile = try await Rootfs.convert([reference, "--tls-verify=false"], cache: try TestSupport.temporaryDirectory("authfile"), environment: ["REGISTRY_AUTH_FILE": authFile])
        #expect(withFile.record.disk.sha256 == fromLayout.record.disk.sha256)

        // Nothing listens: a clear error, quickly.
        let port = try LocalRegistry.freePort()
        let started = ContinuousClock.now
        let down = try await Rootfs.failure(["docker://127.0.0.1:\(port)/tests/rich:v1", "--tls-verify=false", "--registry-timeout", "20s"], cache: try TestSupport.temporaryDirectory("down"))
        #expect(ContinuousClock.now - started < .seconds(25))
        #expect(down.code == "fetch-failed")
        #expect(down.message.contains("connection refused"), "\(down)")
        #expect(down.hint.contains("does not answer"), "\(down)")
    }

    @Test("a multi-platform index: --platform and --target choose; the host's platform by default; a missing platform lists those there are; also from a registry")
    func multiPlatformIndex() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let layout = dir + "/multi"
        let amd64 = try await ImageFixtures.singleLayer([
            .init(path: "bin/", kind: .directory, mode: 0o755),
            .init(path: "bin/busybox", kind: .file(try FileStore.readData("/bin/busybox")), mode: 0o755),
        ], in: dir, name: "multi")
        let program = try await TestSupport.compileFixture("workload-exit7", for: .s390x, into: dir + "/s390x")
        let s390xImage = try await ImageFixtures.newLayout(dir + "/s390x-layout", tag: "v1", architecture: "s390x")
        try await ImageFixtures.addLayer([
            .init(path: "bin/", kind: .directory, mode: 0o755),
            .init(path: "bin/workload", kind: .file(try FileStore.readData(program)), mode: 0o755),
        ], to: s390xImage, scratch: dir)
        // The s390x image's blobs into the same layout, then an index naming both.
        try await ImageFixtures.run("sh", ["-c", "cp -n \(s390xImage.path)/blobs/sha256/* \(layout)/blobs/sha256/"])
        var manifests: [[String: Any]] = []
        for (image, architecture) in [(amd64, "amd64"), (s390xImage, "s390x")] {
            var descriptor = try ImageFixtures.manifestDescriptor(image)
            descriptor.removeValue(forKey: "annotations")
            descriptor["platform"] = ["os": "linux", "architecture": architecture]
            manifests.append(descriptor)
        }
        let index = try ImageFixtures.tag(["schemaVersion": 2, "mediaType": MediaType.ociIndex, "manifests": manifests], mediaType: MediaType.ociIndex, as: "all", in: layout)

        let cache = try TestSupport.temporaryDirectory("cache")
        let forS390x = try await Rootfs.convert([index.reference, "--platform", "linux/s390x"], cache: cache)
        #expect(forS390x.record.platform == "linux/s390x")
        let (disk, _) = try await Rootfs.tree(of: forS390x.disk, in: dir)
        let dumped = dir + "/workload"
        _ = try await disk.debugfs(["dump /bin/workload \(dumped)"])
        let elf = try FileStore.readData(dumped)
        #expect(elf.count > 20 && elf[18] == 0 && elf[19] == 22, "an s390x ELF (EM_S390, big-endian)")
        let byTarget = try await Rootfs.convert([index.reference, "--target", "s390x"], cache: cache)
        #expect(byTarget.cached && byTarget.record.disk.sha256 == forS390x.record.disk.sha256)
        let forAmd64 = try await Rootfs.convert([index.reference, "--target", "x86_64"], cache: cache)
        #expect(forAmd64.record.platform == "linux/amd64")
        #expect(forAmd64.record.manifestDigest != forS390x.record.manifestDigest)
        if Target.hostMachine == "x86_64" {
            let byHost = try await Rootfs.convert([index.reference], cache: cache)
            #expect(byHost.cached && byHost.record.platform == "linux/amd64")
        }
        let missing = try await Rootfs.failure([index.reference, "--platform", "linux/arm64"], cache: cache)
        #expect(missing.code == "not-found")
        #expect(missing.message.contains("no image for linux/arm64"), "\(missing)")
        #expect(missing.hint.contains("linux/amd64, linux/s390x"), "\(missing)")
        let mismatch = try await Rootfs.failure([s390xImage.reference, "--target", "x86_64"], cache: cache)
        #expect(mismatch.message.contains("an image for linux/s390x, not linux/amd64"), "\(mismatch)")

        // The same index through a registry (skopeo copy --all keeps both platforms).
        let registry = try await LocalRegistry.start(in: try TestSupport.temporaryDirectory("registry"), authenticated: false)
        defer { registry.stop() }
        try await ImageFixtures.run("skopeo", ["copy", "--quiet", "--all", "--dest-tls-verify=false", index.reference, "docker://\(registry.host)/tests/multi:v1"])
        let pulled = try await Rootfs.convert(["docker://\(registry.host)/tests/multi:v1", "--tls-verify=false", "--target", "s390x"], cache: try TestSupport.temporaryDirectory("pulled"))
        #expect(pulled.record.manifestDigest == forS390x.record.manifestDigest)
        #expect(pulled.record.disk.sha256 == forS390x.record.disk.sha256)
        let absent = try await Rootfs.failure(["docker://\(registry.host)/tests/multi:v1", "--tls-verify=false", "--platform", "linux/ppc64le"], cache: cache)
        #expect(absent.hint.contains("linux/amd64, linux/s390x"), "\(absent)")
    }
}
