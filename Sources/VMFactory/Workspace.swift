import Foundation

/// Where vmfactory reads and writes: its library of recipes, the cache, the outputs.
public struct Workspace: Sendable {
    public var library: Library
    /// Sources, source trees and build directories. Default `$XDG_CACHE_HOME/vmfactory`,
    /// else `~/.cache/vmfactory`.
    public var cacheDirectory: String
    /// `outputs/`: per recipe and target, the artifacts people use.
    public var outputDirectory: String
    public var sourceSearchPath: [String]
    /// When true, neither apt nor the network is asked for sources.
    public var offline: Bool

    public init(library: Library, cacheDirectory: String? = nil, outputDirectory: String? = nil, sourceDirs: [String] = [], offline: Bool = false, environment: [String: String] = ProcessInfo.processInfo.environment) {
        let cwd = FileManager.default.currentDirectoryPath
        self.library = library
        self.cacheDirectory = cacheDirectory.map { FileStore.absolute($0, relativeTo: cwd) } ?? Self.defaultCacheDirectory(environment: environment)
        self.outputDirectory = outputDirectory.map { FileStore.absolute($0, relativeTo: cwd) } ?? library.defaultOutputDirectory
        self.sourceSearchPath = SourceFetcher.searchPath(sourceDirs: sourceDirs, environment: environment)
        self.offline = offline
    }

    public static func defaultCacheDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let xdg = environment["XDG_CACHE_HOME"], xdg.hasPrefix("/") { return xdg + "/vmfactory" }
        let home = environment["HOME"] ?? NSHomeDirectory()
        return home + "/.cache/vmfactory"
    }

    public func buildDirectory(recipe: String, target: Target) -> String {
        cacheDirectory + "/builds/\(recipe)/\(target.rawValue)"
    }

    public func outputDirectory(recipe: String, target: Target) -> String {
        outputDirectory + "/\(recipe)/\(target.rawValue)"
    }
}

/// The steps of a build, wired to one workspace, runner and console.
public struct Factory: Sendable {
    public var workspace: Workspace
    public var runner: any ProcessRunner
    public var console: Console

    public init(workspace: Workspace, runner: any ProcessRunner = SubprocessRunner(), console: Console) {
        self.workspace = workspace
        self.runner = runner
        self.console = console
    }

    public var recipes: RecipeLoader { RecipeLoader(library: workspace.library) }

    public var fetcher: SourceFetcher {
        SourceFetcher(
            cache: SourceCache(cacheDirectory: workspace.cacheDirectory), searchPath: workspace.sourceSearchPath,
            useApt: !workspace.offline, useNetwork: !workspace.offline, runner: runner, console: console
        )
    }

    public var trees: SourceTreeStore {
        SourceTreeStore(cacheDirectory: workspace.cacheDirectory, runner: runner, console: console)
    }

    public func fetch(_ recipe: Recipe) async throws -> FetchedSource {
        try await fetcher.fetch(recipe.source)
    }

    /// The verified, extracted and patched source tree of `recipe`.
    public func prepare(_ recipe: Recipe) async throws -> (FetchedSource, SourceTree) {
        let key = SourceTreeStore.key(source: recipe.source.sha256, series: recipe.patchSeries)
        // A finished tree was verified when it was made; the tarball is not needed again.
        if let tree = trees.existing(key) {
            let cache = SourceCache(cacheDirectory: workspace.cacheDirectory)
            let origin = cache.origin(of: recipe.source.sha256)
            return (FetchedSource(path: cache.path(for: recipe.source.sha256), sha256: recipe.source.sha256, origin: origin, wasCached: true), tree)
        }
        let source = try await fetch(recipe)
        return (source, try await trees.prepare(tarball: source, series: recipe.patchSeries))
    }

    /// Resolves and verifies the configuration of each target, one after the other.
    public func configure(_ recipe: Recipe, targets: [Target]) async throws -> [ConfigVerification] {
        let (_, tree) = try await prepare(recipe)
        var results: [ConfigVerification] = []
        for target in targets {
            guard let targetRecipe = recipe.target(target) else {
                throw VMFactoryError(.invalidArgument, "recipe \(recipe.name) has no target \(target)", hint: "its targets: \(recipe.targets.map(\.target.rawValue).joined(separator: ", "))")
            }
            let buildDirectory = workspace.buildDirectory(recipe: recipe.name, target: target)
            let lock = try await FileLock.acquire(buildDirectory + ".lock") {
                console.info("waiting: another vmfactory is using \(buildDirectory)")
            }
            defer { lock.release() }
            let output = workspace.outputDirectory(recipe: recipe.name, target: target)
            let configurator = KernelConfigurator(runner: runner, console: console)
            // Always resolved afresh: this is the command that shows what the fragments give.
            let verification = try await configurator.configure(
                recipe: recipe, target: targetRecipe, tree: tree, buildDirectory: buildDirectory,
                outputConfig: output + "/config", logFile: output + "/config.log"
            )
            if verification.passed {
                // Filed for the build that usually follows.
                do {
                    let toolchain = try await Toolchain.identify(target: target, runner: runner)
                    let key = ResolvedConfigCache.key(recipe: recipe, target: targetRecipe, treeKey: tree.key, toolchain: toolchain)
                    try ResolvedConfigCache(cacheDirectory: workspace.cacheDirectory).store(config: output + "/config", log: output + "/config.log", key: key)
                } catch {
                    console.warning("could not keep the resolved config for later builds: \(error)")
                }
            }
            results.append(verification)
        }
        return results
    }
}

extension Factory {
    /// The plan of one target's build, with the toolchain asked for its versions.
    public func plan(_ recipe: Recipe, target: Target, options: BuildOptions) async throws -> KernelBuildPlan {
        guard let targetRecipe = recipe.target(target) else {
            throw VMFactoryError(.invalidArgument, "recipe \(recipe.name) has no target \(target)", hint: "its targets: \(recipe.targets.map(\.target.rawValue).joined(separator: ", "))")
        }
        let toolchain = try await Toolchain.identify(target: target, runner: runner)
        return KernelBuildPlan(
            recipe: recipe, target: targetRecipe,
            treeKey: SourceTreeStore.key(source: recipe.source.sha256, series: recipe.patchSeries),
            toolchain: toolchain, sourceDateEpoch: try KernelBuildPlan.sourceDateEpoch(recipe: recipe),
            jobs: max(1, options.jobs), ccache: options.useCcache ? Doctor.findExecutable("ccache") : nil,
            buildDirectory: workspace.buildDirectory(recipe: recipe.name, target: target),
            outputDirectory: workspace.outputDirectory(recipe: recipe.name, target: target)
        )
    }

    /// Builds each target in turn: kernel, init and initrd. A part whose published artifacts
    /// already match every input is verified and kept; the others are made again, and the
    /// whole set is published at once.
    public func build(_ recipe: Recipe, targets: [Target], options: BuildOptions = BuildOptions()) async throws -> [BuildResult] {
        var results: [BuildResult] = []
        var prepared: (FetchedSource, SourceTree)? = nil
        for target in targets {
            results.append(try await buildTarget(recipe, target: target, options: options, kernel: true, prepared: &prepared))
        }
        return results
    }

    /// Makes only the init and the initrd of each target (`vmfactory initrd`). The kernel
    /// artifacts of an earlier build stay in the set as they are.
    public func buildInitrd(_ recipe: Recipe, targets: [Target]) async throws -> [BuildResult] {
        var results: [BuildResult] = []
        var prepared: (FetchedSource, SourceTree)? = nil
        for target in targets {
            results.append(try await buildTarget(recipe, target: target, options: BuildOptions(), kernel: false, prepared: &prepared))
        }
        return results
    }

    private func buildTarget(_ recipe: Recipe, target: Target, options: BuildOptions, kernel wantKernel: Bool, prepared: inout (FetchedSource, SourceTree)?) async throws -> BuildResult {
        let start = ContinuousClock.now
        let label = "\(recipe.name)/\(target)"
        let plan = try await plan(recipe, target: target, options: options)
        let initrdBuilder = InitrdBuilder(library: workspace.library, runner: runner, console: console)
        let initrdPlan = try await initrdBuilder.plan(recipe, target: target, compiler: plan.toolchain.compiler)
        let lock = try await FileLock.acquire(plan.buildDirectory + ".lock") {
            console.info("waiting: another vmfactory is building \(label) in \(FileStore.displayPath(plan.buildDirectory))")
        }
        defer { lock.release() }

        // What the output folder holds now, part by part, when it still hashes as recorded.
        let output = plan.outputDirectory
        let current = FileStore.isRegularFile(output + "/" + BuildManifest.fileName)
            ? (try? BuildManifest.load(output + "/" + BuildManifest.fileName)).flatMap { $0.schema == BuildManifest.currentSchema ? $0 : nil }
            : nil
        func intact(_ part: BuildManifest.Part, matches: Bool) -> Bool {
            guard let current, matches else { return false }
            let problems = current.verify(in: output, part: part)
            if !problems.isEmpty {
                console.warning("\(FileStore.displayPath(output)) changed since it was built (\(problems.joined(separator: "; "))); building the \(part) again")
            }
            return problems.isEmpty
        }
        // `vmfactory initrd` keeps whatever kernel the set holds, as long as it is intact.
        let keepKernel = intact(.kernel, matches: wantKernel ? current?.kernel?.keys.inputs == plan.inputKey : current?.kernel != nil)
        let initrdIntact = intact(.initrd, matches: current?.initrd?.key == initrdPlan.key)
        if let current, initrdIntact, keepKernel {
            console.info("build \(label): up to date (\(current.artifacts.count) artifacts verified by sha256)")
            return BuildResult(target: target, upToDate: true, outputDirectory: output, seconds: (ContinuousClock.now - start).seconds, manifest: current)
        }

        let work = KernelBuilder.workDirectory(plan)
        try FileStore.createDirectory(work)
        var kernelPart: BuildManifest.KernelPart? = nil
        var artifacts: [BuildManifest.Artifact] = []
        var files: [(name: String, path: String)] = []
        var logs: [String] = []
        var resolvedConfig: String
        if let current, let part = current.kernel, keepKernel {
            // Keep the kernel as built; its files are copied into the new set.
            kernelPart = part
            for artifact in current.artifacts(of: .kernel) {
                artifacts.append(artifact)
                files.append((artifact.name, output + "/" + artifact.name))
            }
            for log in current.logs where FileStore.isRegularFile(output + "/" + log) {
                files.append((log, output + "/" + log))
                logs.append(log)
            }
            resolvedConfig = output + "/config"
        } else if wantKernel {
            if prepared == nil { prepared = try await prepare(recipe) }
            let (source, tree) = prepared!
            let builder = KernelBuilder(runner: runner, console: console, cacheDirectory: workspace.cacheDirectory)
            let built = try await builder.build(plan, tree: tree, source: source)
            kernelPart = built.part
            artifacts += built.outcome.artifacts
            files += built.outcome.files
            logs += ["build.log", "config.log"]
            resolvedConfig = built.resolvedConfig
        } else {
            // No kernel to go with: resolve the config, which says what the kernel can unpack.
            if prepared == nil { prepared = try await prepare(recipe) }
            let verification = try await KernelConfigurator(runner: runner, console: console).configure(
                recipe: recipe, target: plan.target, tree: prepared!.1, buildDirectory: plan.buildDirectory,
                outputConfig: work + "/config", logFile: work + "/config.log",
                cache: ResolvedConfigCache(cacheDirectory: workspace.cacheDirectory), key: plan.configKey
            )
            try verification.requirePassed()
            resolvedConfig = work + "/config"
        }

        var initrdPart: BuildManifest.InitrdPart
        if initrdIntact, let current, let part = current.initrd {
            initrdPart = part
            for artifact in current.artifacts(of: .initrd) {
                artifacts.append(artifact)
                files.append((artifact.name, output + "/" + artifact.name))
            }
        } else {
            let made = try await initrdBuilder.build(initrdPlan, resolvedConfig: resolvedConfig, workDirectory: work)
            initrdPart = made.part
            artifacts += made.outcome.artifacts
            files += made.outcome.files
        }

        let manifest = BuildManifest(
            schema: BuildManifest.currentSchema,
            recipe: .init(name: recipe.name, sha256: recipe.digest),
            target: target, sourceDateEpoch: plan.sourceDateEpoch,
            kernel: kernelPart, initrd: initrdPart, artifacts: artifacts, logs: logs
        )
        OutputPublisher.removeLeftovers(of: output, console: console)
        try OutputPublisher.publish(files: files, manifest: manifest, to: output)
        return BuildResult(target: target, upToDate: false, outputDirectory: output, seconds: (ContinuousClock.now - start).seconds, manifest: manifest)
    }

    /// What `clean` removed.
    public struct CleanReport: Sendable, Codable {
        public var removed: [String]
        public var bytes: Int64
    }

    /// Removes the build directories of `recipe`, or with `all` everything in the cache:
    /// build directories, source trees, ccache and the downloaded sources. Directories in
    /// use by a running build are left alone with a warning.
    public func clean(recipe: String?, all: Bool) async throws -> CleanReport {
        let cache = workspace.cacheDirectory
        var candidates: [String] = []
        let builds = cache + "/builds"
        if all {
            candidates = ((try? FileManager.default.contentsOfDirectory(atPath: cache)) ?? []).sorted().map { cache + "/" + $0 }
        } else if let recipe {
            candidates = [builds + "/" + recipe]
        } else {
            candidates = [builds]
        }
        var report = CleanReport(removed: [], bytes: 0)
        for path in candidates where FileStore.exists(path) {
            let locks = Self.lockFiles(under: path)
            var held: [FileLock] = []
            var busy: String? = nil
            for lockPath in locks {
                guard let lock = FileLock.tryAcquire(lockPath) else { busy = lockPath; break }
                held.append(lock)
            }
            defer { held.forEach { $0.release() } }
            if let busy {
                console.warning("\(FileStore.displayPath(path)) is in use by another vmfactory (\(URL(fileURLWithPath: busy).lastPathComponent)); left alone")
                continue
            }
            report.bytes += FileStore.diskUsage(path)
            try FileStore.removeTree(path)
            report.removed.append(path)
        }
        return report
    }

    static func lockFiles(under path: String) -> [String] {
        guard FileStore.isDirectory(path) else { return [] }
        guard let enumerator = FileManager.default.enumerator(atPath: path) else { return [] }
        var result: [String] = []
        while let entry = enumerator.nextObject() as? String {
            if entry.hasSuffix(".lock") { result.append(path + "/" + entry) }
            // Lock files sit at the top of builds/<recipe>/ and trees/; never inside a tree.
            if entry.split(separator: "/").count >= 2 { enumerator.skipDescendants() }
        }
        return result
    }
}
