import Foundation
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryCore
@testable import VMFactoryImage
@testable import VMFactoryKernel
@testable import VMFactoryPublish

/// `vmfactory publish` and `pull` as users run them: the container recipe's real build for both
/// targets, published to layouts, archives, folders and Debian's docker-registry on
/// 127.0.0.1, read back by skopeo, umoci, tar and sha256sum.
@Suite(
    "Publishing kernels as OCI images", .tags(.integration), .scoped, .needsPinnedKernel, .needsTool("make"), .needsTool("s390x-linux-gnu-gcc"),
    .needsTool("skopeo"), .needsTool("umoci"), .needsTool("docker-registry"), .needsTool("htpasswd"), .serialized
)
struct PublishIntegrationTests {
    struct Published {
        var output: String
        var cache: String
        var manifests: [Target: BuildManifest]
    }

    static func built() async throws -> Published {
        let built = try await SharedBuild.shared.get()
        var manifests: [Target: BuildManifest] = [:]
        for result in built.results { manifests[result.target] = result.manifest }
        return Published(output: built.output, cache: try TestSupport.temporaryDirectory("publish-cache"), manifests: manifests)
    }

    static func cli(_ built: Published, _ arguments: [String]) async throws -> TestSupport.Run {
        try await TestSupport.runCLI([arguments[0], "--cache-dir", built.cache, "--output-dir", built.output] + arguments.dropFirst())
    }

    /// `publish … --format json`, which must succeed; the index digest it prints.
    static func publish(_ built: Published, _ arguments: [String]) async throws -> (digest: String, result: [String: Any]) {
        let run = try await cli(built, ["publish", "--recipe", "container", "--format", "json"] + arguments)
        #expect(run.status == 0, "publish \(arguments) failed:\n\(run.stderr)\n\(run.stdout)")
        let result = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any], "stdout is no JSON object: \(run.stdout)")
        return (try #require(result["index"] as? String), result)
    }

    static func sha256sum(_ path: String) async throws -> String {
        String(try await ImageFixtures.run("sha256sum", [path]).prefix(64))
    }

    static func artifactDirectory(_ built: Published, _ target: Target) -> String {
        built.output + "/container/" + target.rawValue
    }

    /// The bytes of the build manifest as publish writes it.
    static func publishedManifest(_ built: Published, _ target: Target) throws -> Data {
        let manifest = try BuildManifest.load(artifactDirectory(built, target) + "/manifest.json")
        let published = BuiltTarget.publishable(manifest)
        #expect(published.kernel?.source.sha256 == manifest.kernel?.source.sha256)
        #expect(published.kernel?.source.origin == (manifest.kernel?.source.origin?.kind == .path ? nil : manifest.kernel?.source.origin))
        return try published.encoded()
    }

    /// Every file a pulled folder holds equals the build's, byte for byte, and sha256sum -c
    /// accepts its SHA256SUMS.
    static func expectSameAsBuild(_ folder: String, _ target: Target, _ built: Published, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        var names = ["bzImage", "config", "System.map", "initrd.cpio", "manifest.json"]
        if target == .x86_64 { names.append("vmlinux") }
        let listed = try FileManager.default.contentsOfDirectory(atPath: folder).sorted()
        #expect(listed == (names + ["SHA256SUMS"]).sorted(), sourceLocation: sourceLocation)
        for name in names where name != "manifest.json" {
            let same = try await TestSupport.run("cmp", [folder + "/" + name, artifactDirectory(built, target) + "/" + name])
            #expect(same.succeeded, "\(folder)/\(name) differs from the build's", sourceLocation: sourceLocation)
        }
        // The build manifest as published: the build's, without the local path of its source.
        #expect(try FileStore.readData(folder + "/manifest.json") == (try publishedManifest(built, target)), sourceLocation: sourceLocation)
        let check = try await TestSupport.run("sha256sum", ["-c", "SHA256SUMS"], in: folder)
        #expect(check.succeeded, "sha256sum -c in \(folder): \(check.output)", sourceLocation: sourceLocation)
        #expect(check.output.components(separatedBy: ": OK").count - 1 == names.count, sourceLocation: sourceLocation)
    }

    @Test("an OCI layout: an index with both platforms and the annotations, a layer skopeo, tar and umoci read, the same digest twice, pulled back byte for byte")
    func layout() async throws {
        let built = try await Self.built()
        let dir = try TestSupport.temporaryDirectory()
        let (digest, result) = try await Self.publish(built, ["--to", "oci:\(dir)/layout:v1", "--tag", "stable"])
        let again = try await Self.publish(built, ["--to", "oci:\(dir)/layout:v1"])
        #expect(again.digest == digest)
        #expect((again.result["tags"] as? [[String: Any]])?.first?["change"] as? String == "unchanged")
        let elsewhere = try await Self.publish(built, ["--to", "oci:\(dir)/other"])
        #expect(elsewhere.digest == digest, "another layout, the same build: another index")
        #expect((result["targets"] as? [[String: Any]])?.count == 2)

        // The index as skopeo reads it.
        let raw = try await ImageFixtures.run("skopeo", ["inspect", "--raw", "oci:\(dir)/layout:stable"])
        #expect("sha256:" + SHA256Digest.of(raw).hex == digest)
        let index = try #require(try JSONSerialization.jsonObject(with: Data(raw.utf8)) as? [String: Any])
        #expect(index["mediaType"] as? String == MediaType.ociIndex)
        let indexAnnotations = try #require(index["annotations"] as? [String: String])
        let epoch = try #require(built.manifests[.x86_64]?.sourceDateEpoch)
        #expect(indexAnnotations[AnnotationKey.created] == rfc3339(epoch: epoch))
        #expect(indexAnnotations[AnnotationKey.version] == built.manifests[.x86_64]?.kernel?.release)
        #expect(indexAnnotations[AnnotationKey.recipe] == "container")
        let entries = try #require(index["manifests"] as? [[String: Any]])
        #expect(entries.compactMap { ($0["platform"] as? [String: String]).map { "\($0["os"] ?? "")/\($0["architecture"] ?? "")" } }.sorted() == ["linux/amd64", "linux/s390x"])
        for entry in entries {
            #expect(entry["mediaType"] as? String == MediaType.ociManifest)
            let annotations = try #require(entry["annotations"] as? [String: String])
            let target = try #require(annotations[AnnotationKey.target].flatMap(Target.init(rawValue:)))
            let manifest = try #require(built.manifests[target])
            let kernelName = target == .x86_64 ? "vmlinux" : "bzImage"
            #expect(annotations[AnnotationKey.kernelSHA256] == (try await Self.sha256sum(Self.artifactDirectory(built, target) + "/" + kernelName)))
            #expect(annotations[AnnotationKey.initrdSHA256] == (try await Self.sha256sum(Self.artifactDirectory(built, target) + "/initrd.cpio")))
            #expect(annotations[AnnotationKey.buildKey] == manifest.kernel?.keys.build.hex)
            #expect(annotations[AnnotationKey.cmdline] == manifest.kernel?.cmdline)
            #expect(annotations[AnnotationKey.version] == manifest.kernel?.release)
            #expect(annotations[AnnotationKey.created] == rfc3339(epoch: manifest.sourceDateEpoch))
            #expect(annotations[AnnotationKey.recipe] == "container")
        }

        // The s390x layer, copied out by skopeo and listed and unpacked by tar: /boot, 0:0, the epoch.
        try await ImageFixtures.run("skopeo", ["copy", "--quiet", "--override-arch", "s390x", "oci:\(dir)/layout:v1", "dir:\(dir)/s390x-dir"])
        let copied = try #require(try JSONSerialization.jsonObject(with: FileStore.readData(dir + "/s390x-dir/manifest.json")) as? [String: Any])
        let layer = try #require((copied["layers"] as? [[String: Any]])?.first?["digest"] as? String)
        let layerFile = dir + "/s390x-dir/" + layer.dropFirst("sha256:".count)
        let listing = try await ImageFixtures.run("tar", ["--numeric-owner", "--full-time", "-tvzf", layerFile], environment: ["TZ": "UTC"])
        let stamp = DateFormatter()
        stamp.dateFormat = "yyyy-MM-dd HH:mm:ss"
        stamp.timeZone = TimeZone(identifier: "UTC")
        stamp.locale = Locale(identifier: "en_US_POSIX")
        let expectedTime = stamp.string(from: Date(timeIntervalSince1970: TimeInterval(epoch)))
        let listedNames = listing.split(separator: "\n").compactMap { $0.split(separator: " ").last.map(String.init) }
        #expect(listedNames.sorted() == ["boot/", "boot/System.map", "boot/bzImage", "boot/config", "boot/initrd.cpio", "boot/vmfactory-manifest.json"])
        for line in listing.split(separator: "\n") {
            #expect(line.contains(" 0/0 "), "owner not 0:0: \(line)")
            #expect(line.contains(" \(expectedTime) "), "mtime not the epoch \(expectedTime): \(line)")
        }
        try FileStore.createDirectory(dir + "/tar-out")
        try await ImageFixtures.run("tar", ["-xzf", layerFile, "-C", dir + "/tar-out"])
        for name in ["bzImage", "initrd.cpio", "config", "System.map"] {
            #expect(try await TestSupport.run("cmp", [dir + "/tar-out/boot/" + name, Self.artifactDirectory(built, .s390x) + "/" + name]).succeeded, "\(name)")
        }
        #expect(try FileStore.readData(dir + "/tar-out/boot/vmfactory-manifest.json") == (try Self.publishedManifest(built, .s390x)))

        // The x86_64 image, alone in a layout, unpacked by umoci.
        try await ImageFixtures.run("skopeo", ["copy", "--quiet", "--override-arch", "amd64", "oci:\(dir)/layout:v1", "oci:\(dir)/amd64:one"])
        try await ImageFixtures.umoci(["unpack", "--rootless", "--image", "\(dir)/amd64:one", dir + "/bundle"])
        for name in ["vmlinux", "bzImage", "initrd.cpio", "config", "System.map"] {
            #expect(try await TestSupport.run("cmp", [dir + "/bundle/rootfs/boot/" + name, Self.artifactDirectory(built, .x86_64) + "/" + name]).succeeded, "\(name)")
        }

        // Pulled back, both platforms, then one.
        let pull = try await Self.cli(built, ["pull", "oci:\(dir)/layout:v1", "--output", dir + "/pulled", "--format", "json"])
        #expect(pull.status == 0, "\(pull.stderr)")
        #expect(pull.stdout.contains(digest))
        for target in Target.allCases { try await Self.expectSameAsBuild(dir + "/pulled/" + target.rawValue, target, built) }
        let one = try await Self.cli(built, ["pull", "oci:\(dir)/layout:stable", "--platform", "linux/s390x", "--output", dir + "/one"])
        #expect(one.status == 0, "\(one.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/one") == ["s390x"])
    }

    @Test("an OCI archive and a dir: folder: the same digest as the layout, skopeo reads the archive, sha256sum -c accepts the folder, pulled back byte for byte")
    func archiveAndFolder() async throws {
        let built = try await Self.built()
        let dir = try TestSupport.temporaryDirectory()
        let (digest, _) = try await Self.publish(built, ["--to", "oci:\(dir)/layout"])
        let archived = try await Self.publish(built, ["--to", "oci-archive:\(dir)/kernels.tar:v1"])
        #expect(archived.digest == digest)
        let raw = try await ImageFixtures.run("skopeo", ["inspect", "--raw", "oci-archive:\(dir)/kernels.tar:v1"])
        #expect("sha256:" + SHA256Digest.of(raw).hex == digest)
        // A second tag into the same archive keeps the first.
        _ = try await Self.publish(built, ["--to", "oci-archive:\(dir)/kernels.tar:v2"])
        let pulled = try await Self.cli(built, ["pull", "oci-archive:\(dir)/kernels.tar:v1", "--output", dir + "/from-archive"])
        #expect(pulled.status == 0, "\(pulled.stderr)")
        for target in Target.allCases { try await Self.expectSameAsBuild(dir + "/from-archive/" + target.rawValue, target, built) }

        let folder = try await Self.cli(built, ["publish", "--recipe", "container", "--to", "dir:\(dir)/files"])
        #expect(folder.status == 0, "\(folder.stderr)")
        for target in Target.allCases { try await Self.expectSameAsBuild(dir + "/files/" + target.rawValue, target, built) }
    }

    @Test("a tag naming another image is kept without --force (the layout untouched) and replaced with it, the old digest printed")
    func force() async throws {
        let built = try await Self.built()
        let dir = try TestSupport.temporaryDirectory()
        let (both, _) = try await Self.publish(built, ["--to", "oci:\(dir)/layout:v1", "--tag", "keep"])
        let before = try FileStore.readData(dir + "/layout/index.json")
        let refused = try await Self.cli(built, ["publish", "--recipe", "container", "--target", "x86_64", "--to", "oci:\(dir)/layout:v1"])
        #expect(refused.status != 0)
        #expect(refused.stderr.contains(both) && refused.stderr.contains("--force"), "\(refused.stderr)")
        #expect(try FileStore.readData(dir + "/layout/index.json") == before, "a refused publish changed index.json")
        let (single, result) = try await Self.publish(built, ["--target", "x86_64", "--to", "oci:\(dir)/layout:v1", "--force"])
        #expect(single != both)
        #expect((result["tags"] as? [[String: Any]])?.first?["previous"] as? String == both)
        let tags = try await ImageFixtures.run("skopeo", ["inspect", "--raw", "oci:\(dir)/layout:keep"])
        #expect("sha256:" + SHA256Digest.of(tags).hex == both, "the other tag moved")
    }

    @Test("a publish killed with SIGKILL while it assembles the image leaves the layout as it was; the next publish removes what it left")
    func killedPublish() async throws {
        let built = try await Self.built()
        let dir = try TestSupport.temporaryDirectory()
        let (old, _) = try await Self.publish(built, ["--target", "s390x", "--to", "oci:\(dir)/layout:v1"])
        let before = try FileStore.readData(dir + "/layout/index.json")
        let command = Command(TestSupport.executable, [
            "publish", "--recipe", "container", "--to", "oci:\(dir)/layout:v1", "--force", "--cache-dir", built.cache, "--output-dir", built.output,
        ])
        let child = try await ChildProcess.spawn(command, environment: command.environment(on: TestSupport.environment), stdout: .null, stderr: .null)
        let tmp = built.cache + "/tmp"
        let assembling = await TestSupport.eventually(within: 30) {
            TestSupport.files(under: tmp).contains { $0.contains(".partial/blobs/") }
        }
        try #require(assembling, "the publish did not start assembling the image")
        kill(child.pid, SIGKILL)
        _ = await child.wait()
        #expect(try FileStore.readData(dir + "/layout/index.json") == before, "a killed publish changed index.json")
        let raw = try await ImageFixtures.run("skopeo", ["inspect", "--raw", "oci:\(dir)/layout:v1"])
        #expect("sha256:" + SHA256Digest.of(raw).hex == old)
        #expect(TestSupport.files(under: tmp).contains { $0.contains(".partial") }, "the kill came after the publish had cleaned up")

        let (new, _) = try await Self.publish(built, ["--to", "oci:\(dir)/layout:v1", "--force"])
        #expect(new != old)
        let left = TestSupport.files(under: tmp).filter { $0.contains(".partial") }
        #expect(left.isEmpty, "leftovers: \(left)")
    }

    @Test("a changed blob, or a file that is not the one its build manifest names, is refused with both digests, and nothing is written")
    func tampered() async throws {
        let built = try await Self.built()
        let dir = try TestSupport.temporaryDirectory()
        _ = try await Self.publish(built, ["--to", "oci:\(dir)/layout:v1"])
        // One byte of the s390x layer, changed in the layout's blob.
        let index = try JSONSerialization.jsonObject(with: Data(try await ImageFixtures.run("skopeo", ["inspect", "--raw", "oci:\(dir)/layout:v1"]).utf8)) as? [String: Any]
        let entry = try #require((index?["manifests"] as? [[String: Any]])?.first { ($0["platform"] as? [String: String])?["architecture"] == "s390x" })
        let manifestDigest = try #require((entry["digest"] as? String)?.dropFirst(7))
        let manifest = try JSONSerialization.jsonObject(with: FileStore.readData("\(dir)/layout/blobs/sha256/\(manifestDigest)")) as? [String: Any]
        let layer = try #require(((manifest?["layers"] as? [[String: Any]])?.first?["digest"] as? String)?.dropFirst(7))
        let blob = "\(dir)/layout/blobs/sha256/\(layer)"
        chmod(blob, 0o644)
        var bytes = try FileStore.readData(blob)
        bytes[bytes.count / 2] ^= 0xff
        try bytes.write(to: URL(fileURLWithPath: blob))
        let actual = try await Self.sha256sum(blob)
        let refused = try await Self.cli(built, ["pull", "oci:\(dir)/layout:v1", "--output", dir + "/out"])
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("expected sha256 \(layer)") && refused.stderr.contains("found \(actual)"), "\(refused.stderr)")
        #expect(!FileStore.exists(dir + "/out"), "a refused pull wrote \(dir)/out")
        // The x86_64 image is intact and still pulls.
        let other = try await Self.cli(built, ["pull", "oci:\(dir)/layout:v1", "--platform", "linux/amd64", "--output", dir + "/amd64"])
        #expect(other.status == 0, "\(other.stderr)")

        // An image whose digests all agree, but whose bzImage is not the build manifest's.
        var target = try await BuiltTarget.load(directory: Self.artifactDirectory(built, .s390x), recipe: "container", target: .s390x)
        let forged = dir + "/forged-bzImage"
        var kernel = try FileStore.readData(Self.artifactDirectory(built, .s390x) + "/bzImage")
        kernel[kernel.count - 1] ^= 0x01
        try kernel.write(to: URL(fileURLWithPath: forged))
        let position = try #require(target.files.firstIndex { $0.name == "bzImage" })
        target.files[position] = .init(name: "bzImage", path: forged, sha256: SHA256Digest.of(kernel), size: Int64(kernel.count))
        let image = try ArtifactImage.build([target], provenance: Provenance(), blobs: dir + "/forged-blobs")
        _ = try LayoutWriter.publish(image, to: dir + "/forged", tags: ["v1"], force: false, name: "forged")
        let forgedPull = try await Self.cli(built, ["pull", "oci:\(dir)/forged:v1", "--output", dir + "/forged-out"])
        #expect(forgedPull.status != 0)
        let recorded = try #require(built.manifests[.s390x]?.artifact("bzImage")?.sha256.hex)
        #expect(forgedPull.stderr.contains("expected sha256 \(recorded)") && forgedPull.stderr.contains("found \(SHA256Digest.of(kernel).hex)"), "\(forgedPull.stderr)")
        #expect(!FileStore.exists(dir + "/forged-out"))
    }

    @Test("a registry on 127.0.0.1: pushed with skopeo, the same digest, pulled back; with basic auth: refused without credentials, accepted with them; stopped: a clear error")
    func registry() async throws {
        let built = try await Self.built()
        let dir = try TestSupport.temporaryDirectory()
        let (digest, _) = try await Self.publish(built, ["--to", "oci:\(dir)/layout"])
        let open = try await LocalRegistry.start(in: dir + "/open", authenticated: false)
        defer { open.stop() }
        let reference = "docker://\(open.host)/vmf/minimal:v1"
        let pushed = try await Self.publish(built, ["--to", reference, "--tls-verify=false"])
        #expect(pushed.digest == digest)
        let raw = try await ImageFixtures.run("skopeo", ["inspect", "--raw", "--tls-verify=false", reference])
        #expect("sha256:" + SHA256Digest.of(raw).hex == digest, "the registry's index is not the layout's")
        let pulled = try await Self.cli(built, ["pull", reference, "--tls-verify=false", "--output", dir + "/pulled"])
        #expect(pulled.status == 0, "\(pulled.stderr)")
        for target in Target.allCases { try await Self.expectSameAsBuild(dir + "/pulled/" + target.rawValue, target, built) }
        let refused = try await Self.cli(built, ["publish", "--recipe", "container", "--target", "s390x", "--to", reference, "--tls-verify=false"])
        #expect(refused.status != 0 && refused.stderr.contains(digest), "\(refused.stderr)")
        let forced = try await Self.publish(built, ["--target", "s390x", "--to", reference, "--tls-verify=false", "--force"])
        #expect(forced.digest != digest)
        #expect((forced.result["tags"] as? [[String: Any]])?.first?["previous"] as? String == digest)
        let moved = try await ImageFixtures.run("skopeo", ["inspect", "--raw", "--tls-verify=false", reference])
        #expect("sha256:" + SHA256Digest.of(moved).hex == forced.digest)

        let locked = try await LocalRegistry.start(in: dir + "/locked", authenticated: true)
        defer { locked.stop() }
        let private_ = "docker://\(locked.host)/vmf/minimal:v1"
        let anonymous = try await Self.cli(built, ["publish", "--recipe", "container", "--to", private_, "--tls-verify=false"])
        #expect(anonymous.status != 0)
        #expect(anonymous.stderr.contains("credentials"), "\(anonymous.stderr)")
        let wrong = try await Self.cli(built, ["publish", "--recipe", "container", "--to", private_, "--tls-verify=false", "--creds", "\(LocalRegistry.user):Wrong-Pass-9931"])
        #expect(wrong.status != 0 && wrong.stderr.contains("refused the credentials"), "\(wrong.stderr)")
        #expect(!wrong.stderr.contains("Wrong-Pass-9931"), "the password is in the error: \(wrong.stderr)")
        let authFiles = try FileManager.default.contentsOfDirectory(atPath: NSTemporaryDirectory()).filter { $0.hasPrefix(".vmfactory-auth-") }
        #expect(authFiles.isEmpty, "credentials files left: \(authFiles)")
        let creds = "\(LocalRegistry.user):\(LocalRegistry.password)"
        let authenticated = try await Self.publish(built, ["--to", private_, "--tls-verify=false", "--creds", creds])
        #expect(authenticated.digest == digest)
        let privatePull = try await Self.cli(built, ["pull", private_, "--tls-verify=false", "--creds", creds, "--platform", "linux/amd64", "--output", dir + "/private"])
        #expect(privatePull.status == 0, "\(privatePull.stderr)")
        try await Self.expectSameAsBuild(dir + "/private/x86_64", .x86_64, built)

        // The registry goes away mid-test.
        open.stop()
        let begun = ContinuousClock.now
        let down = try await Self.cli(built, ["publish", "--recipe", "container", "--to", "docker://\(open.host)/vmf/minimal:v2", "--tls-verify=false", "--registry-timeout", "20s"])
        #expect(down.status != 0)
        #expect(down.stderr.contains("does not answer"), "\(down.stderr)")
        let downPull = try await Self.cli(built, ["pull", reference, "--tls-verify=false", "--registry-timeout", "20s", "--output", dir + "/never"])
        #expect(downPull.status != 0 && downPull.stderr.contains("does not answer"), "\(downPull.stderr)")
        #expect(!FileStore.exists(dir + "/never"))
        #expect(ContinuousClock.now - begun < .seconds(45))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: built.cache + "/tmp").filter { $0.hasSuffix(".partial") }
        #expect(leftovers.isEmpty, "left in the cache: \(leftovers)")
    }

    @Test("boot --kernel-image reaches the ready line from a published kernel (x86_64 from a registry, s390x from an archive), with no build in the output folder; again from the pulled copy, also with the registry down", .tags(.boot), .needsTool("qemu-system-x86_64"), .needsTool("qemu-system-s390x"), arguments: Target.allCases)
    func bootPublished(_ target: Target) async throws {
        let built = try await Self.built()
        let dir = try TestSupport.temporaryDirectory()
        var registry: LocalRegistry?
        defer { registry?.stop() }
        var reference = "oci-archive:\(dir)/kernels.tar:v1"
        var extra: [String] = []
        if target == .x86_64 {
            registry = try await LocalRegistry.start(in: dir + "/registry", authenticated: false)
            reference = "docker://\(registry!.host)/vmf/minimal:v1"
            extra = ["--tls-verify=false"]
        }
        _ = try await Self.publish(built, ["--to", reference] + extra)
        let empty = dir + "/no-outputs"
        try FileStore.createDirectory(empty)
        let arguments = ["boot", "--recipe", "container", "--target", target.rawValue, "--kernel-image", reference, "--accel", "tcg", "--timeout", TestSupport.bootTimeout, "--cache-dir", built.cache, "--output-dir", empty] + extra
        let boot = try await TestSupport.runCLI(arguments)
        #expect(boot.status == 0, "\(boot.stderr)")
        #expect(boot.stdout.contains("vmfactory-init: ready"), "\(boot.stdout)\n\(boot.stderr)")
        let pulled = try FileManager.default.contentsOfDirectory(atPath: built.cache + "/kernel-images").filter { SHA256Digest(hex: $0) != nil }
        #expect(pulled.count == 1)
        // Booted again, from the pulled copy; for the registry, also once it is down.
        let again = try await TestSupport.runCLI(arguments)
        #expect(again.status == 0 && again.stdout.contains("vmfactory-init: ready"), "\(again.stderr)")
        if let registry {
            registry.stop()
            let offline = try await TestSupport.runCLI(arguments + ["--registry-timeout", "10s"])
            #expect(offline.status == 0 && offline.stdout.contains("vmfactory-init: ready"), "\(offline.stderr)")
            #expect(offline.stderr.contains("booting the copy pulled before"), "\(offline.stderr)")
        }
    }

    /// A kernel image whose digests all agree but whose layer holds `entries` and whose
    /// manifest has `annotations`: what a forger who can write a layout could make.
    static func forge(_ entries: [ArchiveWriter.Entry], annotations: [String: String], target: Target, in layout: String) throws {
        let blobs = layout + "/blobs/sha256"
        try FileStore.createDirectory(blobs)
        func store(_ data: Data) throws -> Descriptor {
            let digest = SHA256Digest.of(data)
            try data.write(to: URL(fileURLWithPath: blobs + "/" + digest.hex))
            return Descriptor(mediaType: "", digest: "sha256:\(digest)", size: Int64(data.count))
        }
        try ArchiveWriter.write(entries, to: layout + "/plain.tar", format: .paxTar)
        try ArchiveWriter.write(entries, to: layout + "/layer.tar.gz", format: .paxTar, compression: .gzip)
        var layer = try store(try FileStore.readData(layout + "/layer.tar.gz"))
        layer.mediaType = MediaType.ociLayerGzip
        var config = ImageConfig()
        config.architecture = Platform.of(target).architecture
        config.os = "linux"
        config.rootfs = ImageConfig.RootFS(type: "layers", diff_ids: ["sha256:\(try SHA256Digest.ofFile(at: layout + "/plain.tar"))"])
        var configDescriptor = try store(try JSONEncoder().encode(config))
        configDescriptor.mediaType = MediaType.ociConfig
        let manifest = ImageManifest(schemaVersion: 2, mediaType: MediaType.ociManifest, config: configDescriptor, layers: [layer], annotations: annotations)
        var manifestDescriptor = try store(try JSONEncoder().encode(manifest))
        manifestDescriptor.mediaType = MediaType.ociManifest
        manifestDescriptor.platform = Platform.of(target)
        let index = ImageIndex(schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [manifestDescriptor])
        var indexDescriptor = try store(try JSONEncoder().encode(index))
        indexDescriptor.mediaType = MediaType.ociIndex
        indexDescriptor.annotations = [AnnotationKey.refName: "v1"]
        try JSONEncoder().encode(ImageIndex(schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [indexDescriptor])).write(to: URL(fileURLWithPath: layout + "/index.json"))
        try #"{"imageLayoutVersion":"1.0.0"}"#.write(toFile: layout + "/oci-layout", atomically: true, encoding: .utf8)
    }

    @Test("forged images whose digests agree are refused, nothing written: missing or contradicting annotations, a link, a path out of /boot, an unknown file, a layer that unpacks to too much")
    func forged() async throws {
        let built = try await Self.built()
        let dir = try TestSupport.temporaryDirectory()
        let target = try await BuiltTarget.load(directory: Self.artifactDirectory(built, .s390x), recipe: "container", target: .s390x)
        let genuine = ArtifactImage.annotations(of: target, provenance: Provenance())
        func files() throws -> [ArchiveWriter.Entry] {
            try [ArchiveWriter.Entry(path: "boot", kind: .directory, mode: 0o755)] + target.files.map { .init(path: "boot/" + $0.name, kind: .file(try $0.data())) }
        }
        // The genuine entries and annotations pull: the forging itself is sound.
        try Self.forge(try files(), annotations: genuine, target: .s390x, in: dir + "/genuine")
        let sound = try await Self.cli(built, ["pull", "oci:\(dir)/genuine:v1", "--output", dir + "/genuine-out"])
        #expect(sound.status == 0, "\(sound.stderr)")

        var cases: [(String, [ArchiveWriter.Entry], [String: String], String)] = []
        var noCmdline = genuine
        noCmdline[AnnotationKey.cmdline] = nil
        cases.append(("no-cmdline", try files(), noCmdline, "has no \(AnnotationKey.cmdline) annotation"))
        var otherTarget = genuine
        otherTarget[AnnotationKey.target] = "x86_64"
        cases.append(("target", try files(), otherTarget, "\(AnnotationKey.target) is 'x86_64'"))
        var otherPath = genuine
        otherPath[AnnotationKey.kernelPath] = "/boot/vmlinux"
        cases.append(("kernel-path", try files(), otherPath, "\(AnnotationKey.kernelPath) is '/boot/vmlinux'"))
        cases.append(("link", try files().map { $0.path == "boot/config" ? .init(path: "boot/config", kind: .symlink("/etc/shadow"), mode: 0o777) : $0 }, genuine, "is not a regular file"))
        cases.append(("escape", try files() + [.init(path: "boot/../etc/cron.d/x", kind: .file(Data("x".utf8)))], genuine, "which a vmfactory kernel image never has"))
        cases.append(("unknown", try files() + [.init(path: "boot/extra.sh", kind: .file(Data("x".utf8)))], genuine, "which a vmfactory kernel image never has"))
        cases.append(("bomb", [.init(path: "boot", kind: .directory, mode: 0o755), .init(path: "boot/System.map", kind: .file(Data(count: 200 << 20)))], genuine, "unpacks to more than"))
        for (name, entries, annotations, message) in cases {
            try Self.forge(entries, annotations: annotations, target: .s390x, in: dir + "/" + name)
            let pull = try await Self.cli(built, ["pull", "oci:\(dir)/\(name):v1", "--output", dir + "/out-" + name])
            #expect(pull.status != 0, "\(name) was pulled")
            #expect(pull.stderr.contains(message), "\(name): \(pull.stderr)")
            #expect(!FileStore.exists(dir + "/out-" + name), "\(name) wrote its output folder")
        }
    }

    @Test("a publish that fails while it copies blobs leaves index.json as it was")
    func failedMidway() async throws {
        let built = try await Self.built()
        let dir = try TestSupport.temporaryDirectory()
        let (old, _) = try await Self.publish(built, ["--target", "s390x", "--to", "oci:\(dir)/layout:v1"])
        let before = try FileStore.readData(dir + "/layout/index.json")
        let target = try await BuiltTarget.load(directory: Self.artifactDirectory(built, .x86_64), recipe: "container", target: .x86_64)
        var image = try ArtifactImage.build([target], provenance: Provenance(), blobs: dir + "/blobs")
        // A blob that is not there, after the real ones: the copy fails once some are in.
        image.digests.append(SHA256Digest.of("not there"))
        #expect(throws: VMFactoryError.self) {
            try LayoutWriter.publish(image, to: dir + "/layout", tags: ["v1"], force: true, name: "layout")
        }
        #expect(try FileStore.readData(dir + "/layout/index.json") == before)
        let copied = try FileManager.default.contentsOfDirectory(atPath: dir + "/layout/blobs/sha256")
        #expect(copied.contains(String(image.index.digest.dropFirst(7))), "the failure came before any blob was copied")
        let raw = try await ImageFixtures.run("skopeo", ["inspect", "--raw", "oci:\(dir)/layout:v1"])
        #expect("sha256:" + SHA256Digest.of(raw).hex == old)
    }

    @Test("a registry that accepts connections and never answers fails within --registry-timeout, saying so")
    func hungRegistry() async throws {
        let built = try await Self.built()
        // A socket that listens and never accepts: connections complete, no byte ever comes.
        let (fd, port) = try LocalRegistry.listeningSocket()
        defer { close(fd) }
        let begun = ContinuousClock.now
        let run = try await Self.cli(built, ["publish", "--recipe", "container", "--to", "docker://127.0.0.1:\(port)/vmf/minimal:v1", "--tls-verify=false", "--registry-timeout", "4s"])
        let took = ContinuousClock.now - begun
        #expect(run.status != 0)
        #expect(run.stderr.contains("does not answer"), "\(run.stderr)")
        #expect(took < .seconds(20), "took \(took)")
    }

    /// docker-registry's filesystem storage rewrites a tag's link in place (truncate, write),
    /// so a client that reads the tag while another pushes it can read an empty link: the
    /// registry answers 500. That state is made here by emptying the link.
    @Test("a tag the registry fails on for a moment (500, its link being rewritten by another pusher) is read again and pulled; one that keeps failing is said to fail on the registry's side")
    func registryServerError() async throws {
        let built = try await Self.built()
        let dir = try TestSupport.temporaryDirectory()
        let registry = try await LocalRegistry.start(in: dir + "/registry", authenticated: false)
        defer { registry.stop() }
        let reference = "docker://\(registry.host)/vmf/minimal:v1"
        let pushed = try await Self.publish(built, ["--to", reference, "--tls-verify=false"])
        let link = dir + "/registry/storage/docker/registry/v2/repositories/vmf/minimal/_manifests/tags/v1/current/link"
        #expect(try FileStore.readText(link) == pushed.digest)
        try Data().write(to: URL(fileURLWithPath: link))
        let skopeo = try await TestSupport.runner.run(Command("skopeo", ["inspect", "--raw", "--tls-verify=false", reference]), output: .capture)
        #expect(!skopeo.succeeded && skopeo.output.contains("500 Internal Server Error"), "skopeo read an emptied tag: \(skopeo.output)")

        // The link written back 1.2 s later: the pull's reads meet the 500 first.
        let restore = Task {
            try await Task.sleep(for: .milliseconds(1200))
            try Data(pushed.digest.utf8).write(to: URL(fileURLWithPath: link))
        }
        let pulled = try await Self.cli(built, ["pull", reference, "--tls-verify=false", "--output", dir + "/pulled"])
        try await restore.value
        #expect(pulled.status == 0, "\(pulled.stderr)")
        for target in Target.allCases { try await Self.expectSameAsBuild(dir + "/pulled/" + target.rawValue, target, built) }

        // Emptied for good: every try fails, and the error says where the fault is.
        try Data().write(to: URL(fileURLWithPath: link))
        let failed = try await Self.cli(built, ["pull", reference, "--tls-verify=false", "--output", dir + "/never"])
        #expect(failed.status != 0)
        #expect(failed.stderr.contains("500 Internal Server Error") && failed.stderr.contains("failed on its side"), "\(failed.stderr)")
        #expect(failed.stderr.contains("failed on its side \(Skopeo.registryFaultPauses.count + 1) times in a row"), "\(failed.stderr)")
        #expect(!FileStore.exists(dir + "/never"))
    }
}
