import Foundation
import VMFactoryCore

/// One target's build, resolved before anything runs: the kernel's plan and the initrd's,
/// each with its keys, from one identification of the toolchain.
public struct TargetBuildPlan: Sendable {
    public let kernel: KernelBuildPlan
    public let initrd: InitrdPlan
    /// False for `vmfactory initrd`, which keeps whatever kernel the set holds.
    public let wantsKernel: Bool

    public var target: Target { kernel.target.target }
    public var outputDirectory: String { kernel.outputDirectory }
    public var label: String { "\(kernel.recipe.name)/\(target)" }
}

/// What a build does with each part of a target's set, decided from the manifest the output
/// folder holds and the plan's keys. A pure function of its inputs; the file checks it needs
/// are done before (`candidates`), the steps that carry it out after.
public struct BuildDecision: Sendable, Equatable {
    public enum KernelAction: Sendable, Equatable {
        /// The published kernel matches and is intact: its files go into the new set.
        case keep
        /// Configure and compile.
        case build
        /// No kernel to go with the initrd (`vmfactory initrd` before any build): resolve the
        /// config only, for the decompressor check.
        case resolveConfig
    }

    public var kernel: KernelAction
    /// Whether the published init and initrd match and are intact.
    public var keepInitrd: Bool

    /// Nothing to make and nothing to publish.
    public var upToDate: Bool { kernel == .keep && keepInitrd }

    /// The parts of `current` whose keys match the plan, so that their files are worth
    /// checking: the kernel when its input key matches (or, for `vmfactory initrd`, when
    /// there is one), the initrd when its key does.
    public static func candidates(current: BuildManifest?, plan: TargetBuildPlan) -> Set<BuildManifest.Part> {
        guard let current, current.schema == BuildManifest.currentSchema else { return [] }
        var parts: Set<BuildManifest.Part> = []
        if let kernel = current.kernel, !plan.wantsKernel || kernel.keys.inputs == plan.kernel.inputKey { parts.insert(.kernel) }
        if current.initrd?.key == plan.initrd.key { parts.insert(.initrd) }
        return parts
    }

    /// `intact`: the candidates whose files still have their recorded sha256.
    public static func decide(plan: TargetBuildPlan, intact: Set<BuildManifest.Part>) -> BuildDecision {
        let kernel: KernelAction = intact.contains(.kernel) ? .keep : plan.wantsKernel ? .build : .resolveConfig
        return BuildDecision(kernel: kernel, keepInitrd: intact.contains(.initrd))
    }
}

extension Factory {
    /// Builds each target in turn: kernel, init and initrd. A part whose published artifacts
    /// already match every input is verified and kept; the others are made again, and the
    /// whole set is published at once.
    public func build(_ recipe: Recipe, targets: [Target], options: BuildOptions = BuildOptions()) async throws -> [BuildResult] {
        let source = PreparedSource(factory: self, recipe: recipe)
        // The helpers are set up (tried) only when a target compiles, once for all.
        let helpers = options.helpers.map { PreparedHelpers(factory: self, helpers: $0, compilers: targets.map { $0.compiler() }) }
        var results: [BuildResult] = []
        for target in targets {
            let plan = try await targetPlan(recipe, target: target, options: options, wantsKernel: true)
            var result = try await build(plan, source: source, options: options, helpers: helpers)
            if let cache = options.cacheTo { result.cachedTo = await push(result, plan: plan, to: cache) }
            results.append(result)
        }
        return results
    }

    /// `--cache-to`: the set just built (or found up to date) into the cache. A failure is a
    /// warning: the build itself is done and intact.
    func push(_ result: BuildResult, plan: TargetBuildPlan, to cache: any BuildCache) async -> String? {
        if let origin = result.manifest.cachedFrom, origin.reference == cache.reference(target: plan.target, inputKey: plan.kernel.inputKey) { return origin.reference }
        do {
            let reference = try await cache.store(recipe: plan.kernel.recipe.name, target: plan.target, inputKey: plan.kernel.inputKey, outputDirectory: result.outputDirectory)
            console.info("build \(plan.label): cached as \(reference)")
            return reference
        } catch {
            console.warning("build \(plan.label): not cached in \(cache.location): \(VMFactoryError(error).description)")
            return nil
        }
    }

    /// `--cache-from`: the entry for the plan's input key, when the cache has one that
    /// verifies and was built from the same inputs; nil (with a warning when an entry was
    /// refused) otherwise.
    func lookUp(_ plan: TargetBuildPlan, in cache: any BuildCache) async throws -> CachedBuild? {
        let work = KernelBuilder.workDirectory(plan.kernel)
        try FileStore.createDirectory(work)
        FileStore.removeLeftovers(of: work + "/cache")
        let directory = FileStore.temporaryName(for: work + "/cache")
        do {
            guard let hit = try await cache.fetch(recipe: plan.kernel.recipe.name, target: plan.target, inputKey: plan.kernel.inputKey, into: directory) else {
                console.info("build \(plan.label): not in the cache \(cache.location); compiling")
                try? FileStore.removeTree(directory)
                return nil
            }
            let kernel = hit.manifest.kernel
            // The input key names every input of the kernel; the recipe's name is not one.
            guard hit.manifest.target == plan.target, kernel?.keys.inputs == plan.kernel.inputKey else {
                throw VMFactoryError(
                    .digestMismatch, "\(hit.origin.reference) holds a build for \(hit.manifest.target) with input key \(kernel?.keys.inputs.hex ?? "none"), not \(plan.kernel.inputKey.hex)",
                    hint: "the entry is mislabeled; the next --cache-to replaces it"
                )
            }
            console.info("build \(plan.label): from the cache, \(hit.origin.reference) (\(hit.origin.index))")
            return hit
        } catch let error as CancellationError {
            throw error
        } catch let error as VMFactoryError where error.code == .interrupted {
            throw error
        } catch {
            try? FileStore.removeTree(directory)
            console.warning("build \(plan.label): the cache entry in \(cache.location) could not be used: \(VMFactoryError(error).description); compiling here (a damaged entry in a registry stays until its tag is deleted there)")
            return nil
        }
    }

    /// Makes only the init and the initrd of each target (`vmfactory initrd`). The kernel
    /// artifacts of an earlier build stay in the set as they are.
    public func buildInitrd(_ recipe: Recipe, targets: [Target]) async throws -> [BuildResult] {
        let source = PreparedSource(factory: self, recipe: recipe)
        var results: [BuildResult] = []
        for target in targets {
            let plan = try await targetPlan(recipe, target: target, options: BuildOptions(), wantsKernel: false)
            results.append(try await build(plan, source: source))
        }
        return results
    }

    func targetPlan(_ recipe: Recipe, target: Target, options: BuildOptions, wantsKernel: Bool) async throws -> TargetBuildPlan {
        let kernel = try await plan(recipe, target: target, options: options)
        let initrd = try InitrdBuilder(library: workspace.library, runner: runner, console: console)
            .plan(recipe, target: target, compiler: kernel.toolchain.compiler, sourceDateEpoch: kernel.sourceDateEpoch)
        return TargetBuildPlan(kernel: kernel, initrd: initrd, wantsKernel: wantsKernel)
    }

    /// Decides under the build directory's lock, then carries the decision out.
    func build(_ plan: TargetBuildPlan, source: PreparedSource, options: BuildOptions = BuildOptions(), helpers: PreparedHelpers? = nil) async throws -> BuildResult {
        var plan = plan
        let start = ContinuousClock.now
        let lock = try await FileLock.acquire(plan.kernel.buildDirectory + ".lock") {
            console.info("waiting: another vmfactory is building \(plan.label) in \(FileStore.displayPath(plan.kernel.buildDirectory))")
        }
        defer { lock.release() }

        let output = plan.outputDirectory
        let current = try? BuildManifest.load(output + "/" + BuildManifest.fileName)
        var intact: Set<BuildManifest.Part> = []
        for part in BuildDecision.candidates(current: current, plan: plan) {
            let problems = try await current!.verify(in: output, part: part)
            if problems.isEmpty {
                intact.insert(part)
            } else {
                console.warning("\(FileStore.displayPath(output)) changed since it was built (\(problems.joined(separator: "; "))); building the \(part) again")
            }
        }
        let decision = BuildDecision.decide(plan: plan, intact: intact)
        if let current, decision.upToDate {
            console.info("build \(plan.label): up to date (\(current.artifacts.count) artifacts verified by sha256)")
            return BuildResult(target: plan.target, upToDate: true, outputDirectory: output, seconds: (ContinuousClock.now - start).seconds, manifest: current)
        }
        var cached: CachedBuild?
        if decision.kernel == .build, let cache = options.cacheFrom { cached = try await lookUp(plan, in: cache) }
        if decision.kernel == .build, cached == nil, let setup = try await helpers?.get() {
            // The helpers' slots, and this machine's cores at least (it preprocesses and links).
            let jobs = options.jobsGiven ? options.jobs : max(options.jobs, setup.slots)
            plan = TargetBuildPlan(kernel: try plan.kernel.with { $0.helpers = setup; $0.jobs = jobs }, initrd: plan.initrd, wantsKernel: plan.wantsKernel)
        }
        defer { if let cached { try? FileStore.removeTree(URL(fileURLWithPath: cached.directory).deletingLastPathComponent().path) } }
        let manifest = try await carryOut(decision, plan: plan, current: current, source: source, cached: cached)
        var result = BuildResult(target: plan.target, upToDate: false, outputDirectory: output, seconds: (ContinuousClock.now - start).seconds, manifest: manifest)
        result.cachedFrom = cached?.origin.reference
        return result
    }

    /// Makes or keeps each part as decided, then publishes the whole set.
    func carryOut(_ decision: BuildDecision, plan: TargetBuildPlan, current: BuildManifest?, source: PreparedSource, cached: CachedBuild? = nil) async throws -> BuildManifest {
        let work = KernelBuilder.workDirectory(plan.kernel)
        try FileStore.createDirectory(work)
        var set = OutputSet()
        let resolvedConfig: String
        switch decision.kernel {
        case .build where cached != nil:
            // From a build cache: its kernel files, verified, instead of a compile. The init and
            // the initrd are made here (seconds), as the cache entry has no init.
            set.keep(.kernel, of: cached!.manifest, in: cached!.directory, logs: false)
            // The command line is the recipe's, not in the input key: this recipe's, then.
            set.kernel?.cmdline = plan.kernel.target.cmdline
            resolvedConfig = cached!.directory + "/config"
        case .keep:
            set.keep(.kernel, of: current!, in: plan.outputDirectory, logs: true)
            resolvedConfig = plan.outputDirectory + "/config"
        case .build:
            let (fetched, tree) = try await source.get()
            let built = try await KernelBuilder(runner: runner, console: console, cacheDirectory: workspace.cacheDirectory).build(plan.kernel, tree: tree, source: fetched)
            set.add(built.outcome, kernel: built.part, logs: ["build.log", "config.log"])
            resolvedConfig = built.resolvedConfig
        case .resolveConfig:
            let (_, tree) = try await source.get()
            let verification = try await configs.resolve(
                plan.kernel, tree: tree, outputConfig: work + "/config", logFile: work + "/config.log", fresh: false,
                configurator: KernelConfigurator(runner: runner, console: console)
            )
            try verification.requirePassed()
            resolvedConfig = work + "/config"
        }
        if decision.keepInitrd {
            set.keep(.initrd, of: current!, in: plan.outputDirectory, logs: false)
        } else {
            let made = try await InitrdBuilder(library: workspace.library, runner: runner, console: console)
                .build(plan.initrd, resolvedConfig: resolvedConfig, workDirectory: work)
            set.add(made.outcome, initrd: made.part)
        }
        let recipe = plan.kernel.recipe
        let manifest = BuildManifest(
            schema: BuildManifest.currentSchema, recipe: .init(name: recipe.name, sha256: recipe.digest),
            target: plan.target, sourceDateEpoch: plan.kernel.sourceDateEpoch,
            kernel: set.kernel, initrd: set.initrd, artifacts: set.artifacts, logs: set.logs,
            cachedFrom: cached?.origin ?? (decision.kernel == .keep ? current?.cachedFrom : nil)
        )
        OutputPublisher.removeLeftovers(of: plan.outputDirectory, console: console)
        try await OutputPublisher.publish(files: set.files, manifest: manifest, to: plan.outputDirectory)
        return manifest
    }
}

/// The parts of a set being put together, kept from the published set or newly made.
struct OutputSet {
    var kernel: BuildManifest.KernelPart?
    var initrd: BuildManifest.InitrdPart?
    var artifacts: [BuildManifest.Artifact] = []
    /// Name in the output folder, and where the file is now.
    var files: [(name: String, path: String)] = []
    var logs: [String] = []

    /// Takes `part` of the published set `current` as it is, with its logs when asked.
    mutating func keep(_ part: BuildManifest.Part, of current: BuildManifest, in output: String, logs withLogs: Bool) {
        switch part {
        case .kernel: kernel = current.kernel
        case .initrd: initrd = current.initrd
        }
        for artifact in current.artifacts(of: part) {
            artifacts.append(artifact)
            files.append((artifact.name, output + "/" + artifact.name))
        }
        guard withLogs else { return }
        for log in current.logs where FileStore.isRegularFile(output + "/" + log) {
            files.append((log, output + "/" + log))
            logs.append(log)
        }
    }

    mutating func add(_ outcome: PartOutcome, kernel part: BuildManifest.KernelPart, logs newLogs: [String]) {
        kernel = part
        artifacts += outcome.artifacts
        files += outcome.files
        logs += newLogs
    }

    mutating func add(_ outcome: PartOutcome, initrd part: BuildManifest.InitrdPart) {
        initrd = part
        artifacts += outcome.artifacts
        files += outcome.files
    }
}

/// distcc or icecream, set up on first use and shared by the targets of one build.
actor PreparedHelpers {
    let factory: Factory
    let helpers: CompileHelpers
    let compilers: [String]
    private var prepared: DistributedCompile??

    init(factory: Factory, helpers: CompileHelpers, compilers: [String]) {
        self.factory = factory
        self.helpers = helpers
        self.compilers = compilers
    }

    func get() async throws -> DistributedCompile? {
        if let prepared { return prepared }
        let environment = factory.workspace.hostEnvironment, cache = factory.workspace.cacheDirectory
        let setup: DistributedCompile?
        switch helpers {
        case .distcc(let hosts, let source):
            let planner = DistccPlanner(runner: factory.runner, console: factory.console, environment: environment, cacheDirectory: cache)
            setup = try await planner.setup(hosts, compilers: compilers, source: source)
        case .icecc(let source):
            let planner = IceccPlanner(runner: factory.runner, console: factory.console, environment: environment, cacheDirectory: cache)
            setup = try await planner.setup(compilers: compilers, source: source)
        }
        prepared = .some(setup)
        return setup
    }
}

/// The recipe's source tree, prepared on first use and shared by the targets of one build.
actor PreparedSource {
    let factory: Factory
    let recipe: Recipe
    private var prepared: (FetchedSource, SourceTree)?

    init(factory: Factory, recipe: Recipe) {
        self.factory = factory
        self.recipe = recipe
    }

    /// Runs in the calling task, so that cancelling it (Ctrl-C) stops the preparation.
    func get() async throws -> (FetchedSource, SourceTree) {
        if let prepared { return prepared }
        let result = try await factory.prepare(recipe)
        prepared = result
        return result
    }
}
