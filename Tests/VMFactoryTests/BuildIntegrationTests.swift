import Foundation
import Testing
@testable import VMFactoryRun
@testable import VMFactoryCore
@testable import VMFactoryLifecycle
@testable import VMFactoryKernel

@Suite("Building the pinned kernel", .tags(.integration), .scoped, .needsPinnedKernel, .needsTool("make"), .needsTool("s390x-linux-gnu-gcc"), .needsTool("readelf"), .serialized)
struct BuildIntegrationTests {
    static func buildArguments(cache: String, output: String, target: String = "all") throws -> [String] {
        try SharedBuild.buildArguments(cache: cache, output: output, target: target)
    }

    static func bytes(_ path: String, at offset: Int, count: Int) throws -> [UInt8] {
        let handle = try #require(FileHandle(forReadingAtPath: path))
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(offset))
        return [UInt8](try handle.read(upToCount: count) ?? Data())
    }

    @Test("the container recipe (the one the run suites boot) builds for both targets: bootable image formats, a complete manifest, reproducible settings")
    func sharedBuildBothTargets() async throws {
        let built = try await SharedBuild.shared.get()
        #expect(built.results.map(\.target) == [.x86_64, .s390x])
        #expect(built.results.allSatisfy { !$0.upToDate })
        #expect(built.stderr.contains("build container/x86_64: ["), "no [n/N] progress: \(built.stderr)")
        let recipePath = TestSupport.repositoryRoot + "/recipes/container.yaml"

        for result in built.results {
            let directory = built.output + "/container/\(result.target)"
            #expect(result.outputDirectory == directory)
            let names = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
            let images = result.target == .x86_64 ? ["bzImage", "vmlinux"] : ["bzImage"]
            #expect(names == (["System.map", "build.log", "config", "config.log", "init", "initrd.cpio", "manifest.json"] + images).sorted())

            // The manifest on disk is the one printed, and describes exactly these files.
            let manifest = try BuildManifest.load(directory + "/manifest.json")
            #expect(manifest == result.manifest)
            #expect(manifest.recipe.name == "container")
            #expect(manifest.recipe.sha256.hex == (try await TestSupport.sha256sum(recipePath)))
            #expect(manifest.target == result.target)
            #expect(manifest.sourceDateEpoch == 1_735_689_600)
            let kernel = try #require(manifest.kernel)
            #expect(kernel.version == "6.1.192")
            #expect(kernel.release.hasPrefix("6.1.192"))
            #expect(kernel.cmdline.hasPrefix("quiet panic=-1"))
            #expect(kernel.source.sha256 == TestSupport.pinnedSHA256)
            #expect(kernel.patchSeries == "linux-6.1-microvm")
            // Every line of the series file that is not a comment, in its order.
            let series = try FileStore.readText(TestSupport.repositoryRoot + "/patches/linux-6.1-microvm/series")
            #expect(kernel.patches.map(\.name) == series.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") })
            for patch in kernel.patches {
                #expect(patch.sha256.hex == (try await TestSupport.sha256sum(TestSupport.repositoryRoot + "/" + patch.path)), "\(patch.path)")
            }
            #expect(kernel.config.base == "tinyconfig")
            #expect(kernel.config.fragments.map(\.path).contains("kernel-configs/common/vsock.conf"))
            for fragment in kernel.config.fragments {
                #expect(fragment.sha256.hex == (try await TestSupport.sha256sum(TestSupport.repositoryRoot + "/" + fragment.path)), "\(fragment.path)")
            }
            #expect(kernel.config.verifiedSettings > 40)
            #expect(kernel.toolchain.compiler.contains("gcc"))
            #expect(kernel.toolchain.make.contains("Make"))
            #expect(kernel.make.variables["KBUILD_BUILD_TIMESTAMP"] == "Wed Jan  1 00:00:00 UTC 2025")
            #expect(kernel.make.variables["KBUILD_BUILD_USER"] == "vmfactory")
            #expect(kernel.make.variables["CROSS_COMPILE"] == (result.target == .s390x ? "s390x-linux-gnu-" : nil))
            #expect(kernel.config.resolved == manifest.artifact("config")?.sha256)

            // The init and the initrd, from this checkout's C sources.
            let initrd = try #require(manifest.initrd)
            #expect(initrd.compression == .none)
            #expect(initrd.initSources.map(\.path) == (InitCompiler.sources + InitCompiler.headers).map { "Sources/guest-init/" + $0 })
            // Every C file of the folder is one of them: none is left out of the key.
            let onDisk = try FileManager.default.contentsOfDirectory(atPath: TestSupport.repositoryRoot + "/Sources/guest-init").filter { $0.hasSuffix(".c") || $0.hasSuffix(".h") }
            #expect(Set(onDisk) == Set(InitCompiler.sources + InitCompiler.headers))
            #expect(initrd.runProtocol == Int(RunProtocol.version))
            #expect(initrd.compiler.contains("gcc"))
            #expect(initrd.flags.contains("-static"))
            #expect(manifest.artifacts(of: .initrd).map(\.name) == ["init", "initrd.cpio"])

            #expect(Set(manifest.artifacts.map(\.name)) == Set(images + ["System.map", "config", "init", "initrd.cpio"]))
            for artifact in manifest.artifacts {
                let path = directory + "/" + artifact.name
                #expect(artifact.size == FileStore.fileSize(path), "\(artifact.name)")
                #expect(artifact.sha256.hex == (try await TestSupport.sha256sum(path)), "\(artifact.name)")
            }
        }

        // x86_64: vmlinux is an ELF with the PVH entry note; bzImage carries HdrS.
        let x86 = built.output + "/container/x86_64"
        #expect(try Self.bytes(x86 + "/vmlinux", at: 0, count: 4) == [0x7f, 0x45, 0x4c, 0x46])
        let notes = try await TestSupport.run("readelf", ["-n", x86 + "/vmlinux"])
        let xenNotes = notes.output.split(separator: "\n").filter { $0.trimmingCharacters(in: .whitespaces).hasPrefix("Xen") }
        #expect(xenNotes.contains { $0.contains("0x00000012") || $0.contains("PHYS32") }, "readelf -n: \(xenNotes)")
        #expect(try Self.bytes(x86 + "/bzImage", at: 0x202, count: 4) == Array("HdrS".utf8))
        // The reproducibility settings reached the kernel's own banner.
        let banner = try Data(contentsOf: URL(fileURLWithPath: x86 + "/vmlinux"))
        #expect(banner.range(of: Data("(vmfactory@vmfactory)".utf8)) != nil)
        // uname -v: the build number, SMP when the kernel has it, the pinned timestamp.
        let smp = try KernelConfig.load(x86 + "/config")["SMP"] == .yes
        #expect(banner.range(of: Data("#1 \(smp ? "SMP " : "")Wed Jan  1 00:00:00 UTC 2025".utf8)) != nil)

        // s390x: an uncompressed image, S390EP at 0x10008.
        let s390 = built.output + "/container/s390x"
        #expect(try KernelConfig.load(s390 + "/config")["KERNEL_UNCOMPRESSED"] == .yes)
        #expect(try Self.bytes(s390 + "/bzImage", at: 0x10008, count: 6) == Array("S390EP".utf8))
    }

    @Test("a rebuild with nothing changed verifies the artifacts and runs nothing; a second build waits for the lock")
    func noOpRebuildAndLock() async throws {
        let built = try await SharedBuild.shared.get()
        let log = built.output + "/container/x86_64/build.log"
        let before = try FileManager.default.attributesOfItem(atPath: log)[.modificationDate] as? Date

        let again = try await TestSupport.runCLI(try Self.buildArguments(cache: TestSupport.sharedCache, output: built.output) + ["--format", "json"])
        #expect(again.status == 0, "\(again.stderr)")
        let results = try JSONDecoder().decode([BuildResult].self, from: Data(again.stdout.utf8))
        #expect(results.map(\.upToDate) == [true, true])
        #expect(results.map(\.manifest) == built.results.map(\.manifest))
        #expect(again.stderr.contains("build container/x86_64: up to date"))
        #expect(!again.stderr.contains("make vmlinux"))
        #expect(try FileManager.default.attributesOfItem(atPath: log)[.modificationDate] as? Date == before)

        // In a cache of its own with a copy of the outputs: hold the build directory's lock as
        // another build would; the command waits, says so, and goes on once the lock is free.
        let cache = try await TestSupport.scopedCache()
        let output = try TestSupport.temporaryDirectory("outputs")
        try FileManager.default.copyItem(atPath: built.output + "/container", toPath: output + "/container")
        let lock = try await FileLock.acquire(cache + "/builds/container/x86_64.lock")
        let stderr = TextOutput.memory()
        let waiting = Task {
            try await LoggedCLI.run(try Self.buildArguments(cache: cache, output: output, target: "x86_64"), stderr: stderr)
        }
        let waited = await TestSupport.eventually(within: 60) { stderr.text.contains("waiting: another vmfactory is building container/x86_64") }
        #expect(waited, "\(stderr.text)")
        lock.release()
        let status = try await waiting.value
        #expect(status == 0)
        #expect(stderr.text.contains("up to date"), "\(stderr.text)")
    }

    @Test("an artifact changed after the build is caught by its sha256 and built again")
    func tamperedArtifact() async throws {
        let built = try await SharedBuild.shared.get()
        let cache = try await TestSupport.scopedCache(copying: ["builds/container/x86_64", "configs"])
        let copy = try TestSupport.temporaryDirectory("outputs")
        try FileManager.default.copyItem(atPath: built.output + "/container", toPath: copy + "/container")
        let image = copy + "/container/x86_64/bzImage"
        let original = try Data(contentsOf: URL(fileURLWithPath: image))
        var tampered = original
        tampered[0x1000] ^= 0xff
        try tampered.write(to: URL(fileURLWithPath: image))

        let run = try await TestSupport.runCLI(try Self.buildArguments(cache: cache, output: copy, target: "x86_64") + ["--format", "json"])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stderr.contains("changed since it was built (bzImage has sha256"), "\(run.stderr)")
        let results = try JSONDecoder().decode([BuildResult].self, from: Data(run.stdout.utf8))
        #expect(results.first?.upToDate == false)
        #expect(try Data(contentsOf: URL(fileURLWithPath: image)) == original)
        #expect(try await BuildManifest.load(copy + "/container/x86_64/manifest.json").verify(in: copy + "/container/x86_64").isEmpty)
    }

    @Test("a config that does not verify stops the build before make, naming the symbol")
    func unverifiedConfigIsNotBuilt() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let cache = try await TestSupport.scopedCache()
        try TestSupport.writeNoFuseRecipe(named: "nofuse-build", in: dir)
        let arguments = ["build", "--recipe", dir + "/recipes/nofuse-build.yaml", "--offline", "--cache-dir", cache, "--output-dir", dir + "/outputs"] + (try TestSupport.sourceDirArguments())
        let run = await TestSupport.runCommand(arguments, runner: TestSupport.runner)
        #expect(run.status == 1)
        #expect(run.stderr.contains("x86_64: 1 of ") && run.stderr.contains(" requested settings did not land; not building"), "\(run.stderr)")
        #expect(run.stderr.contains("CONFIG_VIRTIO_FS: requested y at"))
        #expect(!FileStore.exists(cache + "/builds/nofuse-build/x86_64/.vmfactory/build.log"))
        #expect(!FileStore.exists(dir + "/outputs/nofuse-build/x86_64"))
    }

    @Test("vmfactory killed part-way takes its make with it and leaves no complete-looking set; the next build finishes, from other paths, with the same bytes")
    func killedBuildResumesReproducibly() async throws {
        let built = try await SharedBuild.shared.get()
        let resumed = try await ResumedBuild.shared.get()
        #expect(resumed.gotGoing, "the build never got going")
        #expect(resumed.makeWasRunning, "make was not running when vmfactory was killed")
        #expect(resumed.killed == .signaled(SIGKILL))
        // The parent-death signal reaches make, which stops its compilers and exits.
        #expect(resumed.makeGone, "make (process group \(resumed.makeGroup)) outlived vmfactory")
        #expect(!resumed.leftComplete, "the killed build left \(resumed.output)/container/x86_64 looking complete")

        let rerun = resumed.rerun
        #expect(rerun.status == 0, "\(rerun.stderr)")
        // The killed run had resolved and filed the config before make started.
        #expect(rerun.stderr.contains("reusing the config resolved earlier from the same inputs"), "\(rerun.stderr)")
        let results = try JSONDecoder().decode([BuildResult].self, from: Data(rerun.stdout.utf8))
        let manifest = try #require(results.first?.manifest)
        let reference = try #require(built.results.first { $0.target == .x86_64 }?.manifest)
        // Another cache, another output folder, an interrupted first attempt: the same bytes.
        #expect(manifest.artifact("vmlinux")?.sha256 == reference.artifact("vmlinux")?.sha256)
        #expect(manifest.artifact("bzImage")?.sha256 == reference.artifact("bzImage")?.sha256)
        #expect(manifest.artifacts == reference.artifacts)
        #expect(manifest.kernel?.keys == reference.kernel?.keys)
        #expect(manifest == reference)
    }
}

/// The container recipe's x86_64 kernel built once more per test run, in a cache and an output
/// folder of its own (other paths than the shared build's), as a build goes when vmfactory is
/// killed part-way: the first attempt is killed with SIGKILL a few hundred compile steps in,
/// the second finishes it. Both compile through ccache with the shared build's ccache folder
/// (a scoped cache's), so that what this build does not test (compiling the same objects a
/// second time) costs little; the distcc and icecream tests then compile shares of its objects
/// again for real, through their helpers and from this other build directory, with an empty
/// ccache folder (a copy of a build directory would rebuild everything: objtool's
/// dependencies name the directory's path).
actor ResumedBuild {
    static let shared = ResumedBuild()

    struct Built: Sendable {
        var cache: String
        var output: String
        /// The build log counted 300 compile steps while vmfactory still ran.
        var gotGoing: Bool
        var makeGroup: pid_t
        var makeWasRunning: Bool
        var killed: CommandResult.Termination
        /// make's process group was gone within 10 s of the kill.
        var makeGone: Bool
        /// The killed attempt left a manifest or a vmlinux in the output folder.
        var leftComplete: Bool
        var rerun: TestSupport.Run
    }

    private var task: Task<Built, any Error>?

    func get() async throws -> Built {
        if task == nil {
            task = Task {
                _ = try await SharedBuild.shared.get()
                // In the test process's folder, not a test's: it outlives the test that made it.
                let root = TestScope.processRoot + "/resumed-build"
                let cache = try await TestSupport.scopedCache(at: root + "/cache"), output = root + "/outputs"
                let arguments = try BuildIntegrationTests.buildArguments(cache: cache, output: output, target: "x86_64")
                let vmfactory = try await ChildProcess.spawn(Command(TestSupport.executable, arguments), environment: TestSupport.environment, stdout: .null, stderr: .null)

                // Kill vmfactory itself (not its make) hard, a few hundred compile steps in.
                let work = cache + "/builds/container/x86_64/.vmfactory"
                let going = await TestSupport.eventually(within: 900) {
                    let text = (try? String(contentsOfFile: work + "/build.log", encoding: .utf8)) ?? ""
                    return vmfactory.hasExited || text.split(separator: "\n").filter { BuildProgress.isStep($0) }.count >= 300
                }
                let gotGoing = going && !vmfactory.hasExited
                let group = pid_t(((try? FileStore.readText(work + "/make.pid")) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
                let makeWasRunning = group > 0 && MakeGuard.isRunning(group)
                vmfactory.signalLeader(SIGKILL)
                let killed = await vmfactory.wait()
                let makeGone = await TestSupport.eventually(within: 10) { group > 0 && !MakeGuard.isRunning(group) }
                let leftComplete = FileStore.exists(output + "/container/x86_64/manifest.json") || FileStore.exists(output + "/container/x86_64/vmlinux")

                let rerun = try await TestSupport.runCLI(arguments + ["--format", "json"])
                // From here on, compiles in this cache are real: its ccache folder starts empty.
                try DistributedBuildIntegrationTests.emptyCcache(in: cache)
                return Built(
                    cache: cache, output: output, gotGoing: gotGoing, makeGroup: group, makeWasRunning: makeWasRunning, killed: killed,
                    makeGone: makeGone, leftComplete: leftComplete, rerun: rerun
                )
            }
        }
        return try await task!.value
    }
}

extension BuildIntegrationTests {
    @Test("vmfactory initrd remakes only the init and the initrd, and keeps the set's kernel")
    func initrdFastPath() async throws {
        let built = try await SharedBuild.shared.get()
        let dir = try TestSupport.temporaryDirectory()
        let cache = try await TestSupport.scopedCache(copying: ["configs"])
        try FileManager.default.copyItem(atPath: built.output + "/container", toPath: dir + "/outputs/container")
        // The same recipe under the same name, with a gzip initrd.
        let recipe = try FileStore.readText(TestSupport.repositoryRoot + "/recipes/container.yaml")
        try TestSupport.write(recipe.replacingOccurrences(of: "  compression: none", with: "  compression: gzip"), to: dir + "/recipes/container.yaml")
        let before = try #require(built.results.first { $0.target == .x86_64 }?.manifest)

        var arguments = ["initrd", "--recipe", dir + "/recipes/container.yaml", "--target", "x86_64", "--offline", "--format", "json",
                         "--cache-dir", cache, "--output-dir", dir + "/outputs"] + (try TestSupport.sourceDirArguments())
        let run = await TestSupport.runCommand(arguments, runner: TestSupport.runner)
        #expect(run.status == 0, "\(run.stderr)")
        #expect(!run.stderr.contains("make vmlinux"))
        let manifest = try #require(try JSONDecoder().decode([BuildResult].self, from: Data(run.stdout.utf8)).first?.manifest)
        #expect(manifest.kernel == before.kernel)
        #expect(manifest.artifacts(of: .kernel) == before.artifacts(of: .kernel))
        #expect(manifest.initrd?.compression == .gzip)
        #expect(manifest.artifacts(of: .initrd).map(\.name) == ["init", "initrd.cpio.gz"])
        let output = dir + "/outputs/container/x86_64"
        #expect(!FileStore.exists(output + "/initrd.cpio"))
        #expect(try await manifest.verify(in: output).isEmpty)
        #expect(try BuildManifest.load(output + "/manifest.json") == manifest)

        // A full build of that recipe now finds both parts up to date.
        arguments[0] = "build"
        let again = await TestSupport.runCommand(arguments, runner: TestSupport.runner)
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try JSONDecoder().decode([BuildResult].self, from: Data(again.stdout.utf8)).first?.upToDate == true)
    }

    @Test("a filed config that make's syncconfig rewrites is caught: the config make used is checked and published, and the entry is dropped")
    func filedConfigRewrittenByMake() async throws {
        let built = try await SharedBuild.shared.get()
        let reference = try #require(built.results.first { $0.target == .x86_64 }?.manifest)
        let dir = try TestSupport.temporaryDirectory()
        let cache = try await TestSupport.scopedCache(copying: ["builds/container/x86_64", "configs"])
        let factory = try TestSupport.factory(cache: cache, output: dir + "/outputs")
        let recipe = try factory.recipes.load("container")
        let key = try await factory.plan(recipe, target: .x86_64, options: BuildOptions()).configKey
        let configs = ResolvedConfigCache(cacheDirectory: cache)
        #expect(configs.entry(key) != nil, "the shared build did not file its config")

        // File a config that differs from what Kconfig resolves here only by a line that
        // syncconfig puts back, as a config filed on another host could.
        let resolved = try FileStore.readText(built.output + "/container/x86_64/config")
        let planted = resolved.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.hasPrefix("CONFIG_CC_VERSION_TEXT=") }.joined(separator: "\n")
        #expect(planted != resolved)
        try TestSupport.write(planted, to: dir + "/planted/config")
        try TestSupport.write("planted\n", to: dir + "/planted/config.log")
        configs.remove(key)
        try configs.store(config: dir + "/planted/config", log: dir + "/planted/config.log", key: key)

        let run = await TestSupport.runCommand(try Self.buildArguments(cache: cache, output: dir + "/outputs", target: "x86_64") + ["--format", "json"], runner: TestSupport.runner)
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stderr.contains("reusing the config resolved earlier from the same inputs"), "\(run.stderr)")
        #expect(run.stderr.contains("make changed the resolved config"), "\(run.stderr)")
        let manifest = try #require(try JSONDecoder().decode([BuildResult].self, from: Data(run.stdout.utf8)).first?.manifest)
        #expect(manifest.kernel?.config.resolved == reference.kernel?.config.resolved)
        #expect(manifest.artifacts(of: .kernel) == reference.artifacts(of: .kernel))
        #expect(try FileStore.readText(dir + "/outputs/container/x86_64/config") == resolved)
        #expect(configs.entry(key) == nil)
    }
}

/// Runs the real executable with its stderr collected as it comes.
enum LoggedCLI {
    static func run(_ arguments: [String], stderr: TextOutput) async throws -> Int32 {
        let child = try await ChildProcess.spawn(Command(TestSupport.executable, arguments), environment: TestSupport.environment, stdout: .null, stderr: .pipe)
        await PipeReader.readLines(child.stderr!) { line in
            stderr.writeLine(line)
            return true
        }
        switch await child.wait() {
        case .exited(let code): return code
        case .signaled(let signal): return 128 + signal
        }
    }
}
