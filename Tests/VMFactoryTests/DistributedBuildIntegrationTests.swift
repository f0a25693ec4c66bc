import Foundation
import Testing
@testable import VMFactoryCore
@testable import VMFactoryKernel
@testable import VMFactoryPublish

/// distccd on 127.0.0.1, started by the test and logging to files it reads.
final class DistccDaemon: @unchecked Sendable {
    let port: UInt16
    let log: String
    let process: ChildProcess

    var host: String { "127.0.0.1:\(port)" }

    private init(port: UInt16, log: String, process: ChildProcess) {
        self.port = port
        self.log = log
        self.process = process
    }

    static func start(in directory: String, jobs: Int = 2) async throws -> DistccDaemon {
        let port = try LocalRegistry.freePort()
        // distccd started by root runs as its own user, which must be able to write the log.
        try FileStore.createDirectory(directory)
        chmod(directory, 0o777)
        let log = directory + "/distccd-\(port).log"
        let command = Command("distccd", [
            "--daemon", "--no-detach", "--listen", "127.0.0.1", "--port", String(port), "--allow", "127.0.0.1",
            "--jobs", String(jobs), "--log-file=\(log)", "--log-level", "info",
        ])
        let child = try await ChildProcess.spawn(command, environment: command.environment(on: TestSupport.environment), stdout: .null, stderr: .null)
        let daemon = DistccDaemon(port: port, log: log, process: child)
        guard await TestSupport.eventually(within: 15, { LocalRegistry.canConnect(port) }) else {
            daemon.stop()
            throw VMFactoryError(.internalError, "distccd did not listen on 127.0.0.1:\(port)")
        }
        return daemon
    }

    func stop() {
        process.terminate(grace: .seconds(2))
    }

    /// How many compiles this daemon finished: its log's COMPILE_OK job summaries.
    var compiles: Int {
        let text = (try? FileStore.readText(log)) ?? ""
        return text.components(separatedBy: "COMPILE_OK").count - 1
    }
}

/// An x86_64 build of the container recipe through two distccd helpers on 127.0.0.1, made once per
/// test run in the resumed build's build directory with every eighth object of the kernel
/// proper removed (the command lines are the same with distcc, so kbuild compiles only those):
/// the distcc test checks it, the cache and icecream tests build in its build directory again.
actor DistccBuild {
    static let shared = DistccBuild()

    struct Built: Sendable {
        var cache: String
        var output: String
        var daemons: [DistccDaemon]
        var hosts: String
        var run: TestSupport.Run
        /// The objects removed before the build, which it compiled again, of how many.
        var removed: [String]
        var objects: Int
        /// Compile jobs each helper had finished when the build ended.
        var compiles: [Int]
    }

    private var task: Task<Built, any Error>?

    func get() async throws -> Built {
        if task == nil {
            task = Task {
                let cache = try await ResumedBuild.shared.get().cache
                // In the test process's folder, not a test's: it outlives the test that made it.
                let root = TestScope.processRoot + "/distcc-build"
                let first = try await DistccDaemon.start(in: root + "/logs")
                let second = try await DistccDaemon.start(in: root + "/logs")
                let hosts = "\(first.host)/2 \(second.host)/2"
                let (removed, objects) = try DistributedBuildIntegrationTests.removeCompiledObjects(in: cache + "/builds/container/x86_64", stride: 8)
                let run = try await DistributedBuildIntegrationTests.build(cache: cache, output: root + "/out", ["--distcc", hosts])
                return Built(cache: cache, output: root + "/out", daemons: [first, second], hosts: hosts, run: run, removed: removed, objects: objects, compiles: [first.compiles, second.compiles])
            }
        }
        return try await task!.value
    }
}

/// Kernel builds across machines, with the field's engines: distcc helpers and an icecream
/// cluster on loopback, and a build cache in Debian's docker-registry and in an OCI layout.
/// The reference is the shared build of the container recipe.
@Suite(
    "Builds beyond one machine: distcc, icecream and a registry as the build cache", .tags(.integration), .scoped, .needsPinnedKernel,
    .needsTool("make"), .needsTool("distcc"), .needsTool("distccd"), .needsTool("skopeo"), .needsTool("docker-registry"), .needsTool("s390x-linux-gnu-gcc"),
    .serialized
)
struct DistributedBuildIntegrationTests {
    static let compared = ["vmlinux", "bzImage", "System.map", "config", "initrd.cpio"]

    static func reference() async throws -> String {
        try await SharedBuild.shared.get().output + "/container/x86_64"
    }

    static func expectIdentical(_ output: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let reference = try await reference()
        for name in compared {
            let same = try await TestSupport.run("cmp", [output + "/" + name, reference + "/" + name])
            #expect(same.succeeded, "\(output)/\(name) differs from the reference build: \(same.output)", sourceLocation: sourceLocation)
        }
    }

    static func build(cache: String, output: String, _ extra: [String], source: Bool = true, environment: [String: String] = [:]) async throws -> TestSupport.Run {
        let arguments = ["build", "--recipe", "container", "--target", "x86_64", "--offline", "--cache-dir", cache, "--output-dir", output]
        return try await TestSupport.runCLI(arguments + (source ? try TestSupport.sourceDirArguments() : []) + extra, environment: environment)
    }

    /// Replaces the cache's ccache folder (or the link to another) with an empty one, so that
    /// the next build's compiles are real: with ccache, distcc and icecream get the compiles
    /// ccache misses (`CCACHE_PREFIX`), and the command lines stay those the build directory
    /// was made with ("ccache gcc …"), so kbuild compiles only the objects that are missing.
    static func emptyCcache(in cache: String) throws {
        try? FileManager.default.removeItem(atPath: cache + "/ccache")
        try FileStore.createDirectory(cache + "/ccache")
    }

    /// Objects of the kernel proper in a build directory, compiled from C, every `stride`-th of
    /// them in path order (spread over the tree), removed so that the next build compiles them
    /// again. Host programs (scripts/, tools/: objtool among them) are left alone: relinking
    /// objtool would make kbuild redo every object.
    static func removeCompiledObjects(in build: String, stride: Int) throws -> (removed: [String], of: Int) {
        let sourceTree = try FileManager.default.destinationOfSymbolicLink(atPath: build + "/source")
        let kept = ["scripts/", "tools/", "arch/x86/tools/", "usr/", "."]
        var objects: [String] = []
        let walker = FileManager.default.enumerator(atPath: build)
        while let path = walker?.nextObject() as? String {
            guard path.hasSuffix(".o"), !kept.contains(where: path.hasPrefix) else { continue }
            let folder = (path as NSString).deletingLastPathComponent, name = (path as NSString).lastPathComponent
            guard !folder.isEmpty, !name.hasPrefix("."),
                FileStore.isRegularFile(build + "/" + folder + "/." + name + ".cmd"),
                FileStore.isRegularFile(sourceTree + "/" + path.dropLast(2) + ".c")
            else { continue }
            objects.append(path)
        }
        let chosen = objects.sorted().enumerated().filter { $0.offset % stride == 0 }.map(\.element)
        for object in chosen { try FileManager.default.removeItem(atPath: build + "/" + object) }
        return (chosen, objects.count)
    }

    /// A `make` first in PATH that writes down how it was called, then runs the real one.
    static func recordingMake(in directory: String) throws -> (path: String, log: String) {
        let bin = directory + "/bin"
        let log = directory + "/make-calls"
        try FileStore.createDirectory(bin)
        let real = try #require(Doctor.findExecutable("make", environment: TestSupport.environment))
        try TestSupport.write("#!/bin/sh\necho \"$*\" >> '\(log)'\nexec '\(real)' \"$@\"\n", to: bin + "/make", mode: 0o755)
        return (bin + ":" + (TestSupport.environment["PATH"] ?? "/usr/bin:/bin"), log)
    }

    /// The make calls that would build something (identifying the toolchain asks `make --version`).
    static func builds(in log: String) -> [String] {
        ((try? FileStore.readText(log)) ?? "").split(separator: "\n").map(String.init).filter { $0 != "--version" }
    }

    @Test("distcc: doctor checks the helpers; an x86_64 build through two helpers on loopback compiles on both and gives the reference bytes; with every helper down the build compiles here, warning")
    func distcc() async throws {
        _ = try await Self.reference()
        let dir = try TestSupport.temporaryDirectory()
        let built = try await DistccBuild.shared.get()
        let (first, second) = (built.daemons[0], built.daemons[1])
        defer {
            first.stop()
            second.stop()
        }
        #expect(built.run.status == 0, "\(built.run.stderr)")
        #expect(built.run.stderr.contains("distcc: 2 helpers"), "\(built.run.stderr)")
        #expect(built.run.stderr.contains("make vmlinux bzImage -j4"), "-j is the helpers' slots: \(built.run.stderr)")
        #expect(built.objects > 600 && built.removed.count == (built.objects + 7) / 8, "objects compiled from C in the build directory: \(built.objects), removed \(built.removed.count)")
        for object in built.removed { #expect(FileStore.isRegularFile(built.cache + "/builds/container/x86_64/" + object), "\(object) was not compiled again") }
        #expect(built.compiles.allSatisfy { $0 > built.removed.count / 5 }, "compile jobs per helper: \(built.compiles) of \(built.removed.count)")
        try await Self.expectIdentical(built.output + "/container/x86_64")

        // doctor: both helpers answer and have both compilers; a port nothing listens on does not answer.
        let closed = try LocalRegistry.freePort()
        let doctor = try await TestSupport.runCLI(["doctor", "--distcc", "\(first.host) \(second.host) 127.0.0.1:\(closed)"])
        #expect(doctor.status != 0, "a helper that does not answer is a failed check")
        #expect(doctor.stdout.contains("\(first.host): ok") && doctor.stdout.contains("\(second.host): ok"), "\(doctor.stdout)\n\(doctor.stderr)")
        #expect(doctor.stdout.contains("127.0.0.1:\(closed): does not answer"), "\(doctor.stdout)")
        #expect(first.compiles >= built.compiles[0] + 2 && second.compiles >= built.compiles[1] + 2, "doctor compiled with both compilers on each helper")

        // Every helper stopped: the same build compiles here, with the warning. Objects removed
        // from the build directory are compiled again, here.
        first.stop()
        second.stop()
        let (a, b) = (first.compiles, second.compiles)
        let build = built.cache + "/builds/container/x86_64"
        let removed = ["kernel/fork.o", "init/main.o", "mm/memory.o", "fs/namei.o"]
        for object in removed { try FileManager.default.removeItem(atPath: build + "/" + object) }
        let fallback = try await Self.build(cache: built.cache, output: dir + "/out-local", ["--distcc", built.hosts])
        #expect(fallback.status == 0, "\(fallback.stderr)")
        #expect(fallback.stderr.contains("no helper answers; compiling here"), "\(fallback.stderr)")
        for object in removed { #expect(FileStore.isRegularFile(build + "/" + object), "\(object) was not compiled again") }
        #expect(first.compiles == a && second.compiles == b)
        try await Self.expectIdentical(dir + "/out-local/container/x86_64")
    }

    @Test("a registry as the build cache: --cache-to from one machine, --cache-from on a fresh one runs no make and gives the same bytes; concurrent pushers push the same entry; a poisoned entry is refused and the build goes on here")
    func registryCache() async throws {
        let shared = try await SharedBuild.shared.get().output
        let dir = try TestSupport.temporaryDirectory()
        let registry = try await LocalRegistry.start(in: dir + "/registry", authenticated: false)
        defer { registry.stop() }
        let cacheRef = "docker://\(registry.host)/vmf/cache"

        // The first machine: its build (up to date) pushed, twice at once.
        let machineA = try await TestSupport.scopedCache()
        async let pushA = Self.build(cache: machineA, output: shared, ["--cache-to", cacheRef, "--tls-verify=false", "--format", "json"])
        async let pushB = Self.build(cache: try await TestSupport.scopedCache(), output: shared, ["--cache-to", cacheRef, "--tls-verify=false"])
        let (a, b) = try await (pushA, pushB)
        #expect(a.status == 0 && b.status == 0, "\(a.stderr)\n\(b.stderr)")
        let inputKey = try #require(try await SharedBuild.shared.get().results.first { $0.target == .x86_64 }?.manifest.kernel?.keys.inputs)
        let tag = RegistryBuildCache.tag(inputKey: inputKey, target: .x86_64)
        #expect(tag == inputKey.hex + "-x86_64")
        let raw = try await ImageFixtures.run("skopeo", ["inspect", "--raw", "--tls-verify=false", "\(cacheRef):\(tag)"])
        #expect(a.stdout.contains(SHA256Digest.of(raw).hex), "the entry is not what the push reported: \(a.stderr)")
        #expect(b.stderr.contains(SHA256Digest.of(raw).hex), "the entry is not what the second push reported: \(b.stderr)")

        // The second machine: a fresh cache, no source, a make that would run is written down.
        let machineB = try TestSupport.temporaryDirectory("fresh")
        let (path, calls) = try Self.recordingMake(in: dir)
        let hit = try await Self.build(cache: machineB + "/cache", output: machineB + "/out", ["--cache-from", cacheRef, "--tls-verify=false"], source: false, environment: ["PATH": path])
        #expect(hit.status == 0, "\(hit.stderr)")
        #expect(Self.builds(in: calls).isEmpty, "make ran: \(Self.builds(in: calls))")
        #expect(hit.stdout.contains("kernel from \(cacheRef):\(tag)"), "\(hit.stdout)")
        try await Self.expectIdentical(machineB + "/out/container/x86_64")
        let manifest = try BuildManifest.load(machineB + "/out/container/x86_64/manifest.json")
        #expect(manifest.cachedFrom?.reference == "\(cacheRef):\(tag)")
        #expect(manifest.cachedFrom?.index == "sha256:" + SHA256Digest.of(raw).hex)
        // What the second machine would push for the key is the entry it pulled, byte for byte.
        let again = try await Self.build(cache: machineB + "/cache", output: machineB + "/out", ["--cache-to", "oci:\(dir)/from-b"], source: false, environment: ["PATH": path])
        #expect(again.status == 0, "\(again.stderr)")
        let fromB = try await ImageFixtures.run("skopeo", ["inspect", "--raw", "oci:\(dir)/from-b:\(tag)"])
        #expect(SHA256Digest.of(fromB) == SHA256Digest.of(raw), "a cache hit's set publishes another entry than the one it came from")

        // Poisoned in the registry's storage: the layer's bytes changed under its digest.
        let index = try JSONSerialization.jsonObject(with: Data(raw.utf8)) as? [String: Any]
        let manifestDigest = try #require(((index?["manifests"] as? [[String: Any]])?.first?["digest"] as? String)?.dropFirst(7))
        let imageManifest = try JSONSerialization.jsonObject(with: Data(try await ImageFixtures.run("skopeo", ["inspect", "--raw", "--tls-verify=false", "\(cacheRef)@sha256:\(manifestDigest)"]).utf8)) as? [String: Any]
        let layer = try #require(((imageManifest?["layers"] as? [[String: Any]])?.first?["digest"] as? String)?.dropFirst(7))
        let stored = "\(dir)/registry/storage/docker/registry/v2/blobs/sha256/\(layer.prefix(2))/\(layer)/data"
        var bytes = try FileStore.readData(stored)
        bytes[bytes.count / 2] ^= 0xff
        try bytes.write(to: URL(fileURLWithPath: stored))
        // The build goes on here, in a build directory that holds this build's objects but two
        // (so that it compiles a little, not everything).
        let machineC = try await DistccBuild.shared.get().cache
        for object in ["kernel/fork.o", "fs/namei.o"] { try? FileManager.default.removeItem(atPath: machineC + "/builds/container/x86_64/" + object) }
        try? FileManager.default.removeItem(atPath: calls)
        let refused = try await Self.build(cache: machineC, output: dir + "/out-c", ["--cache-from", cacheRef, "--tls-verify=false"], environment: ["PATH": path])
        #expect(refused.status == 0, "\(refused.stderr)")
        #expect(refused.stderr.contains("could not be used") && refused.stderr.lowercased().contains("digest"), "\(refused.stderr)")
        #expect(!Self.builds(in: calls).isEmpty, "no make ran after the refusal")
        try await Self.expectIdentical(dir + "/out-c/container/x86_64")
        #expect(try BuildManifest.load(dir + "/out-c/container/x86_64/manifest.json").cachedFrom == nil)

        // Poisoned in an OCI layout: the same.
        let layoutRef = "oci:\(dir)/layout-cache"
        let seeded = try await Self.build(cache: machineA, output: shared, ["--cache-to", layoutRef])
        #expect(seeded.status == 0, "\(seeded.stderr)")
        let layoutIndex = try JSONSerialization.jsonObject(with: Data(try await ImageFixtures.run("skopeo", ["inspect", "--raw", "\(layoutRef):\(tag)"]).utf8)) as? [String: Any]
        let entry = try #require(((layoutIndex?["manifests"] as? [[String: Any]])?.first?["digest"] as? String)?.dropFirst(7))
        let entryManifest = try JSONSerialization.jsonObject(with: FileStore.readData("\(dir)/layout-cache/blobs/sha256/\(entry)")) as? [String: Any]
        let layoutLayer = "\(dir)/layout-cache/blobs/sha256/" + (try #require(((entryManifest?["layers"] as? [[String: Any]])?.first?["digest"] as? String)?.dropFirst(7)))
        chmod(layoutLayer, 0o644)
        var layerBytes = try FileStore.readData(layoutLayer)
        layerBytes[layerBytes.count / 3] ^= 0x01
        try layerBytes.write(to: URL(fileURLWithPath: layoutLayer))
        let refusedLayout = try await Self.build(cache: machineC, output: dir + "/out-d", ["--cache-from", layoutRef])
        #expect(refusedLayout.status == 0, "\(refusedLayout.stderr)")
        #expect(refusedLayout.stderr.contains("could not be used") && refusedLayout.stderr.contains("expected sha256"), "\(refusedLayout.stderr)")
        try await Self.expectIdentical(dir + "/out-d/container/x86_64")
    }
}
