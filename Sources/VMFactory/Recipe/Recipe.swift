import Foundation

/// A recipe after loading: every path absolute, every name resolved to files, every value checked.
public struct Recipe: Sendable {
    public var name: String
    public var path: String
    /// sha256 of the recipe file's bytes.
    public var digest: SHA256Digest
    public var description: String
    public var kernelVersion: String
    public var source: SourcePin
    public var baseConfig: BaseConfig
    public var patchSeries: PatchSeries?
    public var targets: [TargetRecipe]

    public func target(_ target: Target) -> TargetRecipe? {
        targets.first { $0.target == target }
    }
}

/// What one target of a recipe asks for.
public struct TargetRecipe: Sendable {
    public var target: Target
    /// The kernel command line: the recipe's common words, then the target's.
    public var cmdline: String
    /// Fragments in the order they apply: the recipe's common list, then the target's own.
    public var fragments: [FragmentFile]
}

/// One fragment file that applies to a target (a `common/` or a per-arch file).
public struct FragmentFile: Sendable, Hashable, Codable {
    public var name: String
    public var path: String
}

/// How the bytes of the kernel source can be obtained; all of them must hash to `sha256`.
public struct SourcePin: Sendable, Codable, Hashable {
    public var sha256: SHA256Digest
    /// The tarball's usual file name, for messages and for a quick look in source directories.
    public var fileName: String?
    public var apt: AptSource?
    public var urls: [String]
    /// Absolute paths of files that may hold the bytes.
    public var paths: [String]

    public init(sha256: SHA256Digest, fileName: String? = nil, apt: AptSource? = nil, urls: [String] = [], paths: [String] = []) {
        self.sha256 = sha256
        self.fileName = fileName
        self.apt = apt
        self.urls = urls
        self.paths = paths
    }
}

/// A Debian package that carries the source tarball as one of its files.
public struct AptSource: Sendable, Codable, Hashable {
    public var package: String
    public var version: String
    /// The file inside the package, for example `usr/src/linux-source-6.1.tar.xz`.
    public var member: String
}

public enum BaseConfig: Sendable, Hashable, CustomStringConvertible {
    case tinyconfig
    case allnoconfig
    case defconfig
    case file(String)

    public static let named: [String: BaseConfig] = ["tinyconfig": .tinyconfig, "allnoconfig": .allnoconfig, "defconfig": .defconfig]

    public var description: String {
        switch self {
        case .tinyconfig: return "tinyconfig"
        case .allnoconfig: return "allnoconfig"
        case .defconfig: return "defconfig"
        case .file(let path): return "file:\(path)"
        }
    }
}
