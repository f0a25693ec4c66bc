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
            results.append(try await configurator.configure(
                recipe: recipe, target: targetRecipe, tree: tree, buildDirectory: buildDirectory,
                outputConfig: output + "/config", logFile: output + "/config.log"
            ))
        }
        return results
    }
}
