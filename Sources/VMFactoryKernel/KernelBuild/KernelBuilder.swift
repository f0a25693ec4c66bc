import Foundation
import VMFactoryArchive
import VMFactoryCore

/// How `vmfactory build` runs.
public struct BuildOptions: Sendable {
    /// make's `-j`; the number of cores by default.
    public var jobs: Int
    /// Whether `jobs` was asked for; when not, a distributed build sizes it to the helpers.
    public var jobsGiven: Bool
    /// Compile through ccache when it is installed.
    public var useCcache: Bool
    /// Compile on helper machines (see `DistributedCompile`).
    public var helpers: CompileHelpers?
    /// Artifacts looked up by input key before compiling (`--cache-from`).
    public var cacheFrom: (any BuildCache)?
    /// Where the artifacts go after a build (`--cache-to`).
    public var cacheTo: (any BuildCache)?

    public init(jobs: Int? = nil, useCcache: Bool = true, helpers: CompileHelpers? = nil) {
        self.jobs = jobs ?? ProcessInfo.processInfo.activeProcessorCount
        self.jobsGiven = jobs != nil
        self.useCcache = useCcache
        self.helpers = helpers
    }
}

/// The helper machines a build compiles on, and where that was asked for: `--distcc`,
/// `$DISTCC_HOSTS`, `--icecc` or the user config's path. One asked for on the command line
/// that cannot be used is an error; one from the environment or the config a warning.
public enum CompileHelpers: Sendable, Equatable {
    /// distcc with this host list.
    case distcc(hosts: String, source: String)
    /// icecream, through the iceccd of this machine and its scheduler.
    case icecc(source: String)

    public var source: String {
        switch self {
        case .distcc(_, let source), .icecc(let source): source
        }
    }

    /// Asked for on the command line.
    public var explicit: Bool { source.hasPrefix("--") }
}

/// What building one target gave.
public struct BuildResult: Sendable, Codable {
    public var target: Target
    /// True when the artifacts already matched every input and nothing ran.
    public var upToDate: Bool
    public var outputDirectory: String
    public var seconds: Double
    public var manifest: BuildManifest
    /// The cache entry the kernel came from (`--cache-from`), when it did.
    public var cachedFrom: String? = nil
    /// Where the set was cached (`--cache-to`).
    public var cachedTo: String? = nil
}

/// Compiles one target's kernel out of tree and publishes its artifacts with a manifest.
public struct KernelBuilder: Sendable {
    public var runner: any ProcessRunner
    public var console: Console
    public var cacheDirectory: String

    public init(runner: any ProcessRunner, console: Console, cacheDirectory: String) {
        self.runner = runner
        self.console = console
        self.cacheDirectory = cacheDirectory
    }

    /// Typical step counts of a first build of the minimal recipe, used for `[n/~N]` until a
    /// build directory has a count of its own.
    static func typicalSteps(_ target: Target) -> Int {
        switch target {
        case .x86_64: return 1480
        case .s390x: return 1325
        }
    }

    /// vmfactory's own files in a build directory, beside what make writes.
    static func workDirectory(_ plan: KernelBuildPlan) -> String { plan.buildDirectory + "/.vmfactory" }

    /// Configures, compiles and checks. The caller holds the build directory's lock and
    /// publishes the outcome.
    public func build(_ plan: KernelBuildPlan, tree: SourceTree, source: FetchedSource) async throws -> KernelOutcome {
        let work = Self.workDirectory(plan)
        try FileStore.createDirectory(work)
        await MakeGuard.stopLeftover(pidFile: work + "/make.pid", buildDirectory: plan.buildDirectory, console: console)

        // Configure into the build directory; the copies for people are published at the end.
        let configs = ResolvedConfigCache(cacheDirectory: cacheDirectory)
        var verification = try await configs.resolve(
            plan, tree: tree, outputConfig: work + "/config", logFile: work + "/config.log", fresh: false,
            configurator: KernelConfigurator(runner: runner, console: console)
        )
        try verification.requirePassed()
        var resolvedConfig = try await SHA256Digest.ofFile(at: work + "/config")

        try await compile(plan, tree: tree, log: work + "/build.log")

        // The images were built from the .config make ended with: that is the one to check
        // and to publish.
        let used = try await SHA256Digest.ofFile(at: plan.buildDirectory + "/.config")
        if used != resolvedConfig {
            verification = try configs.makeRewrote(plan, usedConfig: plan.buildDirectory + "/.config", shownAs: work + "/config", console: console)
            try verification.requirePassed()
            resolvedConfig = used
        }

        var outcome = try await collect(plan, log: work + "/build.log")
        outcome.artifacts.append(BuildManifest.Artifact(part: .kernel, name: "config", size: FileStore.fileSize(work + "/config") ?? 0, sha256: resolvedConfig))
        outcome.files += [("config", work + "/config"), ("config.log", work + "/config.log"), ("build.log", work + "/build.log")]
        let release = (try? FileStore.readText(plan.buildDirectory + "/include/config/kernel.release"))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? plan.recipe.kernelVersion
        let part = kernelPart(plan, source: source, tree: tree, release: release, resolvedConfig: resolvedConfig, verified: verification.checked)
        return KernelOutcome(part: part, outcome: outcome, resolvedConfig: work + "/config")
    }

    /// Runs make for the plan's goals with a live `[n/~N]` line, its whole output in `log`.
    func compile(_ plan: KernelBuildPlan, tree: SourceTree, log: String) async throws {
        let label = "\(plan.recipe.name)/\(plan.target.target)"
        let work = Self.workDirectory(plan)
        try? FileManager.default.removeItem(atPath: log)
        let stepsFile = work + "/steps"
        let fromScratch = !FileStore.exists(plan.buildDirectory + "/vmlinux")
        let previous = (try? FileStore.readText(stepsFile)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        let progress = BuildProgress(logFile: log, estimate: fromScratch ? (previous ?? Self.typicalSteps(plan.target.target)) : nil)
        let make = plan.makeCommand(plan.goals, sourceTree: tree.path, cacheDirectory: cacheDirectory)
        let start = ContinuousClock.now
        console.info("build \(label): make \(plan.goals.joined(separator: " ")) -j\(plan.jobs)\(plan.ccache != nil ? " through ccache" : "") (log: \(FileStore.displayPath(log)))")
        let console = self.console
        let follower = progress.follow { summary in
            console.progress("build \(label): \(summary) \(Elapsed.format(ContinuousClock.now - start))")
        }
        defer {
            follower.cancel()
            console.endProgress()
        }
        try await MakeGuard.run(make, pidFile: work + "/make.pid", runner: runner, log: log, what: "make \(plan.goals.joined(separator: " ")) for \(label)")
        progress.poll()
        console.endProgress()
        console.info("build \(label): \(progress.steps) steps in \(Elapsed.format(ContinuousClock.now - start))")
        if fromScratch { try? FileStore.writeAtomically("\(progress.steps)\n", to: stepsFile) }
    }

    /// The images and the symbol map, checked by their bytes, with their manifest entries.
    func collect(_ plan: KernelBuildPlan, log: String) async throws -> PartOutcome {
        var outcome = PartOutcome(artifacts: [], files: [])
        for spec in plan.artifacts {
            let path = plan.buildDirectory + "/" + spec.buildPath
            guard let size = FileStore.fileSize(path) else {
                throw VMFactoryError(.processFailed, "make finished but \(spec.buildPath) is missing from \(plan.buildDirectory)", hint: "see \(FileStore.displayPath(log))")
            }
            let facts = try spec.kind.map { try KernelImage.inspect(path, as: $0) }
            outcome.artifacts.append(BuildManifest.Artifact(
                part: .kernel, name: spec.name, size: size, sha256: try await SHA256Digest.ofFile(at: path), kind: spec.kind,
                pvhEntry: facts?.pvhEntry.map { String(format: "0x%llx", $0) }, bootProtocol: facts?.bootProtocol
            ))
            outcome.files.append((spec.name, path))
        }
        return outcome
    }

    func kernelPart(
        _ plan: KernelBuildPlan, source: FetchedSource, tree: SourceTree, release: String,
        resolvedConfig: SHA256Digest, verified: Int
    ) -> BuildManifest.KernelPart {
        let shown = ManifestPaths(recipe: plan.recipe).shown
        let fragments = plan.fragments.map { BuildManifest.Input(name: $0.file.name, path: shown($0.file.path), sha256: $0.sha256) }
        var variables = Dictionary(uniqueKeysWithValues: plan.make(sourceTree: "").variables.filter { $0.0 != "CC" })
        variables.merge(plan.reproducibilityVariables) { $1 }
        return BuildManifest.KernelPart(
            version: plan.recipe.kernelVersion, release: release, cmdline: plan.target.cmdline,
            source: .init(sha256: source.sha256, origin: source.origin, tree: tree.key),
            patchSeries: tree.seriesName,
            patches: tree.patches.map { .init(name: $0.name, path: shown($0.path), sha256: $0.sha256) },
            config: .init(base: plan.recipe.baseConfig.manifestDescription(shown), fragments: fragments, resolved: resolvedConfig, verifiedSettings: verified),
            toolchain: plan.toolchain,
            make: .init(goals: plan.goals, variables: variables),
            keys: .init(inputs: plan.inputKey, build: plan.buildKey(resolvedConfig: resolvedConfig))
        )
    }
}

/// Files a step made for the output set, with their manifest entries.
public struct PartOutcome: Sendable {
    public var artifacts: [BuildManifest.Artifact]
    /// Name in the output folder, and where the file is now.
    public var files: [(name: String, path: String)]
}

public struct KernelOutcome: Sendable {
    public var part: BuildManifest.KernelPart
    public var outcome: PartOutcome
    /// The resolved `.config`, for the steps that check it.
    public var resolvedConfig: String
}

extension BaseConfig {
    func manifestDescription(_ shown: (String) -> String) -> String {
        if case .file(let path) = self { return "file:" + shown(path) }
        return description
    }
}

/// Paths in a manifest: relative to the folder that holds the recipe's `recipes/` when they
/// lie inside it (the vmfactory checkout for its own recipes), so a manifest does not depend
/// on where the checkout is.
struct ManifestPaths {
    var root: String

    init(recipe: Recipe) {
        root = URL(fileURLWithPath: recipe.path).deletingLastPathComponent().deletingLastPathComponent().path
    }

    func shown(_ path: String) -> String {
        path.hasPrefix(root + "/") ? String(path.dropFirst(root.count + 1)) : path
    }
}
