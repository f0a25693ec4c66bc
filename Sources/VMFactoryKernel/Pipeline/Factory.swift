import Foundation
import VMFactoryCore

/// The kernel pipeline's steps, wired to one workspace, runner and console: fetch, prepare,
/// configure, and (in `Factory+Build.swift`) build.
public struct Factory: Sendable {
    public var workspace: Workspace
    public var runner: any ProcessRunner
    public var console: Console

    public init(workspace: Workspace, runner: any ProcessRunner, console: Console) {
        self.workspace = workspace
        self.runner = runner
        self.console = console
    }

    public var recipes: RecipeLoader { RecipeLoader(library: workspace.library, currentDirectory: workspace.currentDirectory) }

    public var fetcher: SourceFetcher {
        SourceFetcher(
            cache: SourceCache(cacheDirectory: workspace.cacheDirectory), searchPath: workspace.sourceSearchPath,
            useApt: !workspace.offline, useNetwork: !workspace.offline, runner: runner, console: console
        )
    }

    public var trees: SourceTreeStore {
        SourceTreeStore(cacheDirectory: workspace.cacheDirectory, runner: runner, console: console)
    }

    public var configs: ResolvedConfigCache { ResolvedConfigCache(cacheDirectory: workspace.cacheDirectory) }

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

    /// The plan of one target's kernel build, with the toolchain asked for its versions.
    public func plan(_ recipe: Recipe, target: Target, options: BuildOptions) async throws -> KernelBuildPlan {
        let targetRecipe = try recipe.requireTarget(target)
        let toolchain = try await Toolchain.identify(target: target, runner: runner)
        return try KernelBuildPlan(KernelBuildPlan.Inputs(
            recipe: recipe, target: targetRecipe,
            treeKey: SourceTreeStore.key(source: recipe.source.sha256, series: recipe.patchSeries),
            toolchain: toolchain, sourceDateEpoch: try workspace.sourceDateEpoch(recipe),
            jobs: max(1, options.jobs), ccache: options.useCcache ? Doctor.findExecutable("ccache", environment: workspace.hostEnvironment) : nil,
            buildDirectory: workspace.buildDirectory(recipe: recipe.name, target: target),
            outputDirectory: workspace.outputDirectory(recipe: recipe.name, target: target)
        ))
    }

    /// Resolves and verifies the configuration of each target afresh, one after the other,
    /// and files each that verifies for the build that usually follows.
    public func configure(_ recipe: Recipe, targets: [Target]) async throws -> [ConfigVerification] {
        let (_, tree) = try await prepare(recipe)
        var results: [ConfigVerification] = []
        for target in targets {
            let plan = try await plan(recipe, target: target, options: BuildOptions())
            let lock = try await FileLock.acquire(plan.buildDirectory + ".lock") {
                console.info("waiting: another vmfactory is using \(plan.buildDirectory)")
            }
            defer { lock.release() }
            results.append(try await configs.resolve(
                plan, tree: tree, outputConfig: plan.outputDirectory + "/config", logFile: plan.outputDirectory + "/config.log",
                fresh: true, configurator: KernelConfigurator(runner: runner, console: console)
            ))
        }
        return results
    }
}
