import Foundation
import VMFactoryCore

/// Where vmfactory reads and writes: its library of recipes, the cache, the outputs, and the
/// host environment it was started in (passed on purpose, never read from the process).
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
    /// The environment vmfactory was started with: `SOURCE_DATE_EPOCH`, `PATH` for children.
    public var hostEnvironment: [String: String]
    /// Relative paths on the command line are relative to this folder.
    public var currentDirectory: String

    public init(
        library: Library, cacheDirectory: String? = nil, outputDirectory: String? = nil, sourceDirs: [String] = [],
        offline: Bool = false, environment: [String: String], currentDirectory: String
    ) {
        self.library = library
        self.cacheDirectory = Self.cacheDirectory(given: cacheDirectory, environment: environment, currentDirectory: currentDirectory)
        self.outputDirectory = outputDirectory.map { FileStore.absolute($0, relativeTo: currentDirectory) } ?? library.defaultOutputDirectory
        self.sourceSearchPath = SourceFetcher.searchPath(sourceDirs: sourceDirs, environment: environment, currentDirectory: currentDirectory)
        self.offline = offline
        self.hostEnvironment = environment
        self.currentDirectory = currentDirectory
    }

    /// `--cache-dir`, else `$XDG_CACHE_HOME/vmfactory`, else `~/.cache/vmfactory`.
    public static func cacheDirectory(given: String?, environment: [String: String], currentDirectory: String) -> String {
        CacheFolder.path(given: given, environment: environment, currentDirectory: currentDirectory)
    }

    public func buildDirectory(recipe: String, target: Target) -> String {
        cacheDirectory + "/builds/\(recipe)/\(target.rawValue)"
    }

    public func outputDirectory(recipe: String, target: Target) -> String {
        outputDirectory + "/\(recipe)/\(target.rawValue)"
    }

    /// The `SOURCE_DATE_EPOCH` of a build of `recipe`.
    public func sourceDateEpoch(_ recipe: Recipe) throws -> Int {
        try KernelBuildPlan.sourceDateEpoch(recipe: recipe, environment: hostEnvironment)
    }
}
