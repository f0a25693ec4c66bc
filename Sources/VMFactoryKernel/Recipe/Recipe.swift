import Foundation
import VMFactoryArchive
import VMFactoryCore

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
    /// The recipe's own `source-date-epoch`; `$SOURCE_DATE_EPOCH` applies when it is absent.
    public var sourceDateEpoch: Int?
    /// What goes into each target's initrd.
    public var initrd: InitrdSpec = InitrdSpec()

    public func target(_ target: Target) -> TargetRecipe? {
        targets.first { $0.target == target }
    }

    /// The recipe's settings for `target`, or the error that names the targets it has.
    public func requireTarget(_ target: Target) throws -> TargetRecipe {
        guard let found = self.target(target) else {
            throw VMFactoryError(.invalidArgument, "recipe \(name) has no target \(target)", hint: "its targets: \(targets.map(\.target.rawValue).joined(separator: ", "))")
        }
        return found
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
    public var urls: [String] = []
    /// Absolute paths of files that may hold the bytes.
    public var paths: [String] = []
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

/// The recipe's `initrd:` section: how the init behaves and what else the initrd holds.
public struct InitrdSpec: Sendable, Hashable {
    public enum Compression: String, Sendable, Codable, CaseIterable {
        case none, gzip, zstd, lz4

        /// The file name's ending.
        public var suffix: String {
            switch self {
            case .none: return ""
            case .gzip: return ".gz"
            case .zstd: return ".zst"
            case .lz4: return ".lz4"
            }
        }

        /// The decompressor the kernel needs to unpack it.
        public var kernelSymbol: String? {
            switch self {
            case .none: return nil
            case .gzip: return "RD_GZIP"
            case .zstd: return "RD_ZSTD"
            case .lz4: return "RD_LZ4"
            }
        }
    }

    /// A file copied from the build host into the initrd.
    public struct File: Sendable, Hashable {
        public var source: String
        public var destination: String
        public var mode: UInt32
    }

    public var compression: Compression = .none
    public var hostname: String = "vmfactory"
    /// What init runs when the kernel command line names nothing after `--`.
    public var entrypoint: [String] = []
    public var environment: [(String, String)] = []
    public var files: [File] = []

    public init() {}

    public static func == (lhs: InitrdSpec, rhs: InitrdSpec) -> Bool {
        lhs.compression == rhs.compression && lhs.hostname == rhs.hostname && lhs.entrypoint == rhs.entrypoint
            && lhs.environment.map(\.0) == rhs.environment.map(\.0) && lhs.environment.map(\.1) == rhs.environment.map(\.1)
            && lhs.files == rhs.files
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(compression)
        hasher.combine(hostname)
        hasher.combine(entrypoint)
        for (key, value) in environment {
            hasher.combine(key)
            hasher.combine(value)
        }
        hasher.combine(files)
    }
}
