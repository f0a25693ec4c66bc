import Foundation
import Testing
@testable import VMFactoryCore
@testable import VMFactoryKernel

@Suite("Kernel build plans, keys, images and progress", .tags(.unit), .scoped)
struct KernelBuildTests {
    static let toolchain = Toolchain(
        compiler: "gcc (Debian 12.2.0-14+deb12u1) 12.2.0", linker: "GNU ld (GNU Binutils for Debian) 2.40",
        hostCompiler: "gcc (Debian 12.2.0-14+deb12u1) 12.2.0", make: "GNU Make 4.3"
    )

    static func plan(_ target: Target, ccache: String? = nil, epoch: Int = 1_704_067_200, jobs: Int = 2, toolchain: Toolchain = toolchain, recipe: Recipe? = nil) throws -> KernelBuildPlan {
        let recipe = try recipe ?? TestSupport.recipes.load("minimal")
        return try KernelBuildPlan(KernelBuildPlan.Inputs(
            recipe: recipe, target: try #require(recipe.target(target)),
            treeKey: SourceTreeStore.key(source: recipe.source.sha256, series: recipe.patchSeries),
            toolchain: toolchain, sourceDateEpoch: epoch, jobs: jobs, ccache: ccache, hostMachine: "x86_64",
            buildDirectory: "/cache/builds/minimal/\(target)", outputDirectory: "/out/minimal/\(target)"
        ))
    }

    @Test("make runs out of tree per target: the goals, ARCH, the cross compiler and the reproducibility settings")
    func makeArgv() throws {
        let x86 = try Self.plan(.x86_64).makeCommand(["vmlinux", "bzImage"], sourceTree: "/src", cacheDirectory: "/cache")
        #expect(x86.argv == ["make", "-C", "/src", "O=/cache/builds/minimal/x86_64", "ARCH=x86_64", "-j2", "vmlinux", "bzImage"])
        #expect(x86.workingDirectory == "/cache/builds/minimal/x86_64")
        #expect(x86.environment["KBUILD_BUILD_TIMESTAMP"] == "Mon Jan  1 00:00:00 UTC 2024")
        #expect(x86.environment["KBUILD_BUILD_USER"] == "vmfactory")
        #expect(x86.environment["KBUILD_BUILD_HOST"] == "vmfactory")
        #expect(x86.environment["KBUILD_BUILD_VERSION"] == "1")
        #expect(x86.environment["CCACHE_DIR"] == nil)
        #expect(try Self.plan(.x86_64).goals == ["vmlinux", "bzImage"])

        let s390 = try Self.plan(.s390x, jobs: 8)
        #expect(s390.goals == ["bzImage"])
        #expect(s390.makeCommand(s390.goals, sourceTree: "/src", cacheDirectory: "/cache").argv
            == ["make", "-C", "/src", "O=/cache/builds/minimal/s390x", "ARCH=s390", "CROSS_COMPILE=s390x-linux-gnu-", "-j8", "bzImage"])
        #expect(s390.artifacts.map(\.buildPath) == ["arch/s390/boot/bzImage", "System.map"])
        #expect(try Self.plan(.x86_64).artifacts.map(\.buildPath) == ["vmlinux", "arch/x86/boot/bzImage", "System.map"])

        let cached = try Self.plan(.s390x, ccache: "/usr/bin/ccache")
        let command = cached.makeCommand(["bzImage"], sourceTree: "/src", cacheDirectory: "/cache")
        #expect(command.arguments.contains("CC=/usr/bin/ccache s390x-linux-gnu-gcc"))
        #expect(command.environment["CCACHE_DIR"] == "/cache/ccache")
        // A miss compiles once, without a separate preprocessor run.
        #expect(command.environment["CCACHE_DEPEND"] == "true")
        // Relative paths would change __FILE__ in the image: ccache gets them as make does.
        #expect(command.environment["CCACHE_BASEDIR"] == nil)
    }

    @Test("KBUILD_BUILD_TIMESTAMP reads like date(1), from the recipe's epoch or SOURCE_DATE_EPOCH")
    func timestamps() throws {
        #expect(try Self.plan(.x86_64, epoch: 0).buildTimestamp == "Thu Jan  1 00:00:00 UTC 1970")
        #expect(try Self.plan(.x86_64, epoch: 1_700_000_000).buildTimestamp == "Tue Nov 14 22:13:20 UTC 2023")
        var recipe = try TestSupport.recipes.load("minimal")
        recipe.sourceDateEpoch = nil
        #expect(try KernelBuildPlan.sourceDateEpoch(recipe: recipe, environment: ["SOURCE_DATE_EPOCH": "1234"]) == 1234)
        #expect(try KernelBuildPlan.sourceDateEpoch(recipe: recipe, environment: [:]) == 0)
        let error = try #require(throws: VMFactoryError.self) { try KernelBuildPlan.sourceDateEpoch(recipe: recipe, environment: ["SOURCE_DATE_EPOCH": "yesterday"]) }
        #expect(error.message.contains("SOURCE_DATE_EPOCH=yesterday"))
        recipe.sourceDateEpoch = 99
        #expect(try KernelBuildPlan.sourceDateEpoch(recipe: recipe, environment: ["SOURCE_DATE_EPOCH": "1234"]) == 99)
    }

    /// One plan per input that decides the resolved config, each changed on its own: the
    /// target, each toolchain version, the source tree, the base config, the fragment list,
    /// order and bytes (an edited copy is written into `scratch`).
    static func configVariants(of base: KernelBuildPlan, scratch: String) throws -> [(String, KernelBuildPlan)] {
        var variants: [(String, KernelBuildPlan)] = [("target", try plan(.s390x))]
        for field in [\Toolchain.compiler, \.linker, \.hostCompiler, \.make] {
            var toolchain = Self.toolchain
            toolchain[keyPath: field] += " (patched)"
            variants.append(("toolchain", try plan(.x86_64, toolchain: toolchain)))
        }
        variants.append(("source tree", try base.with { $0.treeKey = .of("another tree") }))
        variants.append(("base config", try base.with { $0.recipe.baseConfig = .allnoconfig }))
        variants.append(("one fragment fewer", try base.with { $0.target.fragments.removeLast() }))
        variants.append(("fragment order", try base.with { $0.target.fragments.swapAt(0, 1) }))
        let original = base.target.fragments[0]
        try TestSupport.write(try FileStore.readText(original.path) + "CONFIG_PRINTK=y\n", to: scratch + "/base.conf")
        variants.append(("fragment bytes", try base.with { $0.target.fragments[0] = FragmentFile(name: original.name, path: scratch + "/base.conf") }))
        return variants
    }

    /// `plan` built elsewhere, faster, through ccache: nothing that changes the bytes.
    static func relocated(_ plan: KernelBuildPlan) throws -> KernelBuildPlan {
        try plan.with {
            $0.buildDirectory = "/elsewhere"
            $0.outputDirectory = "/elsewhere/out"
            $0.jobs = 64
            $0.ccache = "/usr/bin/ccache"
        }
    }

    @Test("the build key is stable, and every single input changes it")
    func buildKeys() throws {
        let base = try Self.plan(.x86_64)
        #expect(base.inputKey == (try Self.plan(.x86_64)).inputKey)
        #expect(try Self.relocated(base).inputKey == base.inputKey)

        let dir = try TestSupport.temporaryDirectory()
        var variants = try Self.configVariants(of: base, scratch: dir)
        variants.append(("epoch", try Self.plan(.x86_64, epoch: 1)))
        variants.append(("kernel version", try base.with { $0.recipe.kernelVersion = "6.1.193" }))

        var keys: Set<SHA256Digest> = [base.inputKey]
        for (what, variant) in variants {
            #expect(keys.insert(variant.inputKey).inserted, "changing the \(what) did not change the key")
        }
        #expect(base.buildKey(resolvedConfig: .of("a")) == base.buildKey(resolvedConfig: .of("a")))
        #expect(base.buildKey(resolvedConfig: .of("a")) != base.buildKey(resolvedConfig: .of("b")))
    }

    @Test("a manifest round-trips through JSON and catches an artifact that changed", .tags(.integration))
    func manifestVerify() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write("kernel bytes", to: dir + "/bzImage")
        try TestSupport.write("ffffffff81000000 T _text\n", to: dir + "/System.map")
        let plan = try Self.plan(.x86_64)
        let tree = SourceTree(key: plan.treeKey, path: "/src", sourceSHA256: plan.recipe.source.sha256, patches: plan.recipe.patchSeries?.patches ?? [], seriesName: "linux-6.1-microvm")
        let source = FetchedSource(path: "/cache/x", sha256: plan.recipe.source.sha256, origin: SourceOrigin(kind: .path, location: "/shared/kernel/x.tar.xz"), wasCached: false)
        let artifacts = try ["bzImage", "System.map"].map { name in
            BuildManifest.Artifact(part: .kernel, name: name, size: FileStore.fileSize(dir + "/" + name)!, sha256: try SHA256Digest.ofFile(at: dir + "/" + name))
        }
        let builder = KernelBuilder(runner: RefusingRunner(), console: .recording(), cacheDirectory: "/cache")
        let kernel = builder.kernelPart(plan, source: source, tree: tree, release: "6.1.192", resolvedConfig: .of("config"), verified: 48)
        let manifest = BuildManifest(
            schema: BuildManifest.currentSchema, recipe: .init(name: "minimal", sha256: plan.recipe.digest), target: .x86_64,
            sourceDateEpoch: plan.sourceDateEpoch, kernel: kernel, initrd: nil, artifacts: artifacts, logs: ["build.log"]
        )

        #expect(kernel.version == "6.1.192")
        #expect(kernel.release == "6.1.192")
        #expect(kernel.cmdline == plan.target.cmdline)
        #expect(kernel.source.origin == SourceOrigin(kind: .path, location: "/shared/kernel/x.tar.xz"))
        #expect(kernel.patches.map(\.path) == plan.recipe.patchSeries?.patches.map { "patches/linux-6.1-microvm/" + $0.name })
        #expect(kernel.patches.first?.path == "patches/linux-6.1-microvm/0001-exit-restart-instead-of-panicking-when-init-exits.patch")
        #expect(kernel.config.fragments.first?.path == "kernel-configs/common/base.conf")
        #expect(kernel.config.fragments.count == plan.target.fragments.count)
        #expect(kernel.config.resolved == .of("config"))
        #expect(kernel.make.variables["ARCH"] == "x86_64")
        #expect(kernel.make.variables["KBUILD_BUILD_TIMESTAMP"] == "Mon Jan  1 00:00:00 UTC 2024")
        #expect(kernel.keys.inputs == plan.inputKey)
        #expect(kernel.keys.build == plan.buildKey(resolvedConfig: .of("config")))

        let decoded = try JSONDecoder().decode(BuildManifest.self, from: try manifest.encoded())
        #expect(decoded == manifest)
        #expect(try await decoded.verify(in: dir).isEmpty)
        try TestSupport.write("kernel BYTES", to: dir + "/bzImage")
        #expect(try await decoded.verify(in: dir) == ["bzImage has sha256 \(try await TestSupport.sha256sum(dir + "/bzImage")), the manifest says \(artifacts[0].sha256)"])
        try FileManager.default.removeItem(atPath: dir + "/System.map")
        #expect(try await decoded.verify(in: dir).last == "System.map is missing")
    }

    /// A minimal ELF64 x86_64 file with one PT_NOTE segment holding `notes`.
    static func elf(notes: [(name: String, type: UInt32, desc: [UInt8])], machine: UInt16 = 62) -> Data {
        var noteBytes: [UInt8] = []
        func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8((value >> (8 * $0)) & 0xff) } }
        func le64(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8((value >> (8 * UInt64($0))) & 0xff) } }
        func pad(_ bytes: [UInt8]) -> [UInt8] { bytes + Array(repeating: 0, count: (4 - bytes.count % 4) % 4) }
        for note in notes {
            let name = Array(note.name.utf8) + [0]
            noteBytes += le32(UInt32(name.count)) + le32(UInt32(note.desc.count)) + le32(note.type) + pad(name) + pad(note.desc)
        }
        var header: [UInt8] = [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0] + Array(repeating: 0, count: 8)
        header += [2, 0] + [UInt8(machine & 0xff), UInt8(machine >> 8)] + le32(1) + le64(0) + le64(64) + le64(0) + le32(0)
        header += [64, 0, 56, 0, 1, 0, 64, 0, 0, 0, 0, 0]
        let program = le32(4) + le32(4) + le64(120) + le64(0) + le64(0) + le64(UInt64(noteBytes.count)) + le64(UInt64(noteBytes.count)) + le64(4)
        return Data(header + program + noteBytes)
    }

    @Test("kernel images are checked by their bytes: the PVH note, the HdrS header, the S390EP marker")
    func imageFormats() throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write(Self.elf(notes: [("GNU", 3, [1, 2, 3, 4]), ("Xen", 0x12, [0x00, 0x10, 0x00, 0x01])]), to: dir + "/vmlinux")
        #expect(try KernelImage.inspect(dir + "/vmlinux", as: .elfPVH).pvhEntry == 0x0100_1000)
        try TestSupport.write(Self.elf(notes: [("Xen", 0x11, [0, 0, 0, 0])]), to: dir + "/nopvh")
        let missing = try #require(throws: VMFactoryError.self) { try KernelImage.inspect(dir + "/nopvh", as: .elfPVH) }
        #expect(missing.message.contains("no Xen PHYS32_ENTRY (type 0x12) note"))
        try TestSupport.write(Self.elf(notes: [("Xen", 0x12, [0, 0, 0, 0])], machine: 22), to: dir + "/s390elf")
        #expect(throws: VMFactoryError.self) { try KernelImage.inspect(dir + "/s390elf", as: .elfPVH) }

        var bz = [UInt8](repeating: 0, count: 0x300)
        bz.replaceSubrange(0x202..<0x206, with: Array("HdrS".utf8))
        bz[0x206] = 0x0f
        bz[0x207] = 0x02
        try TestSupport.write(Data(bz), to: dir + "/bzImage")
        #expect(try KernelImage.inspect(dir + "/bzImage", as: .x86BzImage).bootProtocol == "2.15")
        #expect(throws: VMFactoryError.self) { try KernelImage.inspect(dir + "/vmlinux", as: .x86BzImage) }

        var s390 = [UInt8](repeating: 0, count: 0x10100)
        s390.replaceSubrange(0x10008..<0x1000e, with: Array("S390EP".utf8))
        try TestSupport.write(Data(s390), to: dir + "/s390")
        #expect(try KernelImage.inspect(dir + "/s390", as: .s390Uncompressed).kind == .s390Uncompressed)
        #expect(throws: VMFactoryError.self) { try KernelImage.inspect(dir + "/bzImage", as: .s390Uncompressed) }
    }

    @Test("progress counts kbuild's step lines as the log grows")
    func progress() throws {
        #expect(BuildProgress.isStep("  CC      kernel/fork.o"))
        #expect(BuildProgress.isStep("  HOSTCC  scripts/kconfig/conf.o"))
        #expect(BuildProgress.isStep("  LD      vmlinux"))
        #expect(!BuildProgress.isStep("make[1]: Entering directory '/b'"))
        #expect(!BuildProgress.isStep("Kernel: arch/x86/boot/bzImage is ready  (#1)"))
        #expect(!BuildProgress.isStep("  CC"))
        #expect(!BuildProgress.isStep("  warning: something is odd"))

        let dir = try TestSupport.temporaryDirectory()
        let log = dir + "/build.log"
        let progress = BuildProgress(logFile: log, estimate: 4)
        progress.poll()
        #expect(progress.summary == "[0/~4]")
        try TestSupport.write("make[1]: Entering directory '/b'\n  CC      init/main.o\n  CC      kernel/fo", to: log)
        progress.poll()
        #expect(progress.steps == 1)
        let handle = try #require(FileHandle(forWritingAtPath: log))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data("rk.o\n  AR      kernel/built-in.a\n  LD      vmlinux\n  OBJCOPY arch/x86/boot/vmlinux.bin\n".utf8))
        try handle.close()
        progress.poll()
        #expect(progress.steps == 5)
        #expect(progress.summary == "[5/~5] OBJCOPY arch/x86/boot/vmlinux.bin")
        #expect(BuildProgress(logFile: log, estimate: nil).summary == "[0]")
    }

    @Test("make runs under a shell that records its process group, and a make left running is stopped", .tags(.integration))
    func leftoverMake() async throws {
        let wrapped = MakeGuard.wrapped(Command("make", ["-C", "/src", "O=/b", "vmlinux"]), pidFile: "/b/.vmfactory/make.pid")
        #expect(wrapped.argv == ["/bin/sh", "-c", "echo $$ > \"$0\" && exec \"$@\"", "/b/.vmfactory/make.pid", "make", "-C", "/src", "O=/b", "vmlinux"])

        let dir = try TestSupport.temporaryDirectory()
        let pidFile = dir + "/make.pid"
        // A stand-in for an orphaned make: a process group whose leader has O=<dir> in its
        // argv. Started like vmfactory starts make (its own group, a clean signal mask).
        let standIn = Task {
            try await TestSupport.runner.run(Command("/bin/sh", ["-c", "echo $$ > \"$1\"; sleep 300 & wait", "O=\(dir)", pidFile]), output: .capture)
        }
        var waited = 0
        while (try? String(contentsOfFile: pidFile, encoding: .utf8)) == nil, waited < 500 {
            try await Task.sleep(for: .milliseconds(10))
            waited += 1
        }
        let group = try #require(pid_t((try String(contentsOfFile: pidFile, encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(MakeGuard.isRunning(group))
        #expect(MakeGuard.isMake(group, building: dir))
        #expect(!MakeGuard.isMake(group, building: dir + "/other"))

        let console = Console.recording()
        await MakeGuard.stopLeftover(pidFile: pidFile, buildDirectory: dir, console: console, patience: .seconds(5))
        let ended = try await standIn.value
        #expect(ended.termination == .signaled(SIGTERM))
        #expect(!MakeGuard.isRunning(group), "the process group still runs")
        #expect(console.recordedLines.contains { $0.contains("stopping the make (process group \(group))") })
        #expect(!FileStore.exists(pidFile))

        // A pid file naming some other process is removed and nothing is signalled.
        try TestSupport.write("\(getpid())\n", to: pidFile)
        await MakeGuard.stopLeftover(pidFile: pidFile, buildDirectory: dir, console: console)
        #expect(!FileStore.exists(pidFile))
    }

    @Test("publishing swaps a complete set in, keeps bench reports, and clears leftovers of killed runs")
    func publishing() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let output = dir + "/out/minimal/x86_64"
        try TestSupport.write("old", to: output + "/bzImage")
        try TestSupport.write("{}", to: output + "/bench/report.json")
        try TestSupport.write("stale", to: dir + "/out/minimal/.x86_64.999999999-1.partial/bzImage")
        try TestSupport.write("new", to: dir + "/build/bzImage")
        let plan = try Self.plan(.x86_64)
        let tree = SourceTree(key: plan.treeKey, path: "/src", sourceSHA256: plan.recipe.source.sha256, patches: [], seriesName: nil)
        let source = FetchedSource(path: "/x", sha256: plan.recipe.source.sha256, origin: nil, wasCached: true)
        let kernel = KernelBuilder(runner: RefusingRunner(), console: .recording(), cacheDirectory: "/cache").kernelPart(
            plan, source: source, tree: tree, release: "6.1.192", resolvedConfig: .of(""), verified: 0
        )
        let manifest = BuildManifest(
            schema: BuildManifest.currentSchema, recipe: .init(name: "minimal", sha256: plan.recipe.digest), target: .x86_64,
            sourceDateEpoch: 0, kernel: kernel, initrd: nil, artifacts: [.init(part: .kernel, name: "bzImage", size: 3, sha256: .of("new"))], logs: []
        )
        OutputPublisher.removeLeftovers(of: output, console: .recording())
        try await OutputPublisher.publish(files: [("bzImage", dir + "/build/bzImage")], manifest: manifest, to: output)
        #expect(TestSupport.files(under: dir + "/out") == ["minimal", "minimal/x86_64", "minimal/x86_64/bench", "minimal/x86_64/bench/report.json", "minimal/x86_64/bzImage", "minimal/x86_64/manifest.json"])
        #expect(try FileStore.readText(output + "/bzImage") == "new")
        #expect(try await BuildManifest.load(output + "/manifest.json").verify(in: output).isEmpty)
    }
}

extension CommandLineTests {
    @Test("vmfactory clean removes one recipe's builds, or the whole cache, and leaves a build in progress alone")
    func clean() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let cache = dir + "/cache"
        for path in ["builds/minimal/x86_64/vmlinux", "builds/minimal/s390x/vmlinux", "builds/other/x86_64/vmlinux", "trees/abc/linux/Makefile", "sources/sha256/abc"] {
            try TestSupport.write("x", to: cache + "/" + path)
        }
        for lock in ["builds/minimal/x86_64.lock", "builds/minimal/s390x.lock", "builds/other/x86_64.lock"] {
            try TestSupport.write("", to: cache + "/" + lock)
        }

        // A build of minimal/x86_64 is running: its recipe's folder is left alone.
        let lock = try await FileLock.acquire(cache + "/builds/minimal/x86_64.lock")
        let busy = await TestSupport.runCommand(["clean", "--recipe", "minimal", "--cache-dir", cache])
        #expect(busy.status == 0)
        #expect(busy.stderr.contains("is in use by another vmfactory (x86_64.lock); left alone"), "\(busy.stderr)")
        #expect(FileStore.exists(cache + "/builds/minimal/s390x/vmlinux"))
        lock.release()

        let one = await TestSupport.runCommand(["clean", "--recipe", "minimal", "--cache-dir", cache, "--format", "json"])
        #expect(one.status == 0, "\(one.stderr)")
        let report = try JSONDecoder().decode(CacheCleaner.Report.self, from: Data(one.stdout.utf8))
        #expect(report.removed == [cache + "/builds/minimal"])
        #expect(!FileStore.exists(cache + "/builds/minimal"))
        #expect(FileStore.exists(cache + "/builds/other/x86_64/vmlinux"))
        #expect(FileStore.exists(cache + "/trees/abc/linux/Makefile"))

        let all = await TestSupport.runCommand(["clean", "--all", "--cache-dir", cache])
        #expect(all.status == 0, "\(all.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: cache).isEmpty)
        let both = await TestSupport.runCommand(["clean", "--all", "--recipe", "minimal", "--cache-dir", cache])
        #expect(both.status == 64)
        #expect(both.stderr.contains("give --recipe or --all, not both"), "\(both.stderr)")
    }

    @Test("build takes make's -jN spelling and refuses a job count out of range before it runs")
    func jobsOption() async throws {
        for spelling in [["-j0"], ["-j", "0"], ["--jobs", "0"], ["-j2000"]] {
            let result = await TestSupport.runCommand(["build", "--recipe", "minimal"] + spelling)
            #expect(result.status == 64, "\(spelling): \(result.stderr)")
            #expect(result.stderr.contains("--jobs takes a number from 1 to 1024"), "\(spelling): \(result.stderr)")
        }
    }
}

extension KernelBuildTests {
    static func targetPlan(wantsKernel: Bool = true, initrdFiles: [SHA256Digest] = []) throws -> TargetBuildPlan {
        let kernel = try plan(.x86_64)
        let initrd = InitrdPlan(
            recipe: kernel.recipe, target: .x86_64, compiler: toolchain.compiler,
            initInputs: [BuildManifest.Input(name: "init.c", path: "Sources/guest-init/init.c", sha256: .of("init.c"))],
            fileDigests: initrdFiles, sourceDateEpoch: kernel.sourceDateEpoch
        )
        return TargetBuildPlan(kernel: kernel, initrd: initrd, wantsKernel: wantsKernel)
    }

    /// A published set as `plan` would have made it, or with other keys.
    static func manifest(for plan: TargetBuildPlan, kernelInputs: SHA256Digest? = nil, initrdKey: SHA256Digest? = nil, kernel: Bool = true) throws -> BuildManifest {
        let tree = SourceTree(key: plan.kernel.treeKey, path: "/src", sourceSHA256: plan.kernel.recipe.source.sha256, patches: [], seriesName: nil)
        let source = FetchedSource(path: "/x", sha256: plan.kernel.recipe.source.sha256, origin: nil, wasCached: true)
        var part = KernelBuilder(runner: RefusingRunner(), console: .recording(), cacheDirectory: "/cache").kernelPart(
            plan.kernel, source: source, tree: tree, release: "6.1.192", resolvedConfig: .of("config"), verified: 1
        )
        if let kernelInputs { part.keys.inputs = kernelInputs }
        let initrd = BuildManifest.InitrdPart(
            compression: .none, hostname: "vmfactory", entrypoint: [], environment: [], initSources: plan.initrd.initInputs,
            compiler: plan.initrd.compiler, flags: InitCompiler.flags, files: [], entries: 20, key: initrdKey ?? plan.initrd.key
        )
        return BuildManifest(
            schema: BuildManifest.currentSchema, recipe: .init(name: "minimal", sha256: plan.kernel.recipe.digest), target: .x86_64,
            sourceDateEpoch: plan.kernel.sourceDateEpoch, kernel: kernel ? part : nil, initrd: initrd, artifacts: [], logs: []
        )
    }

    @Test("the build decision: what to keep, make or only configure, from the published manifest and the plan's keys")
    func buildDecision() throws {
        let plan = try Self.targetPlan()
        let current = try Self.manifest(for: plan)
        // Nothing published: build everything.
        #expect(BuildDecision.candidates(current: nil, plan: plan).isEmpty)
        #expect(BuildDecision.decide(plan: plan, intact: []) == BuildDecision(kernel: .build, keepInitrd: false))
        // Both keys match: both parts are worth verifying; intact, the set is up to date.
        #expect(BuildDecision.candidates(current: current, plan: plan) == [.kernel, .initrd])
        let upToDate = BuildDecision.decide(plan: plan, intact: [.kernel, .initrd])
        #expect(upToDate == BuildDecision(kernel: .keep, keepInitrd: true) && upToDate.upToDate)
        // A file that no longer hashes as recorded: that part only is made again.
        #expect(BuildDecision.decide(plan: plan, intact: [.initrd]) == BuildDecision(kernel: .build, keepInitrd: true))
        // Another initrd key (a changed initrd section): the kernel is kept.
        let otherInitrd = try Self.manifest(for: plan, initrdKey: .of("other"))
        #expect(BuildDecision.candidates(current: otherInitrd, plan: plan) == [.kernel])
        // Another input key (a changed fragment): the kernel is built, the initrd kept.
        let otherKernel = try Self.manifest(for: plan, kernelInputs: .of("other"))
        #expect(BuildDecision.candidates(current: otherKernel, plan: plan) == [.initrd])
        // An older manifest schema counts as nothing published.
        var old = current
        old.schema = BuildManifest.currentSchema - 1
        #expect(BuildDecision.candidates(current: old, plan: plan).isEmpty)

        // `vmfactory initrd` keeps any intact kernel, whatever its key, and only configures
        // when there is none.
        let initrdOnly = try Self.targetPlan(wantsKernel: false)
        #expect(BuildDecision.candidates(current: otherKernel, plan: initrdOnly).contains(.kernel))
        #expect(BuildDecision.decide(plan: initrdOnly, intact: [.kernel]) == BuildDecision(kernel: .keep, keepInitrd: false))
        let noKernel = try Self.manifest(for: initrdOnly, kernel: false)
        #expect(!BuildDecision.candidates(current: noKernel, plan: initrdOnly).contains(.kernel))
        #expect(BuildDecision.decide(plan: initrdOnly, intact: []) == BuildDecision(kernel: .resolveConfig, keepInitrd: false))
    }

    @Test("a log file that cannot be opened is an I/O error naming it, not a missing tool; a missing tool is named as one", .tags(.integration))
    func runnerErrors() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write("a file, not a folder", to: dir + "/file")
        let log = await #expect(throws: VMFactoryError.self) {
            try await TestSupport.runner.run(Command("true", []), output: .logFile(dir + "/file/build.log"))
        }
        #expect(log?.code == .io, "\(String(describing: log))")
        #expect(log?.message.contains(dir + "/file") == true)
        let missing = await #expect(throws: VMFactoryError.self) {
            try await TestSupport.runner.run(Command("vmfactory-no-such-tool", []), output: .capture)
        }
        #expect(missing?.code == .missingTool)
        #expect(missing?.message.contains("vmfactory-no-such-tool") == true)
        #expect(missing?.hint?.contains("vmfactory doctor") == true)
    }
}
