import Foundation
import VMFactoryArchive
import VMFactoryCore

/// `manifest.json` beside the artifacts: what was built, from exactly what, and the sha256 of
/// everything. Nothing in it depends on when the build ran, and only the source's local path
/// and a build cache's address (`cachedFrom`) on where: publishing leaves both out, so two
/// builds of the same inputs publish the same manifest.
public struct BuildManifest: Sendable, Codable, Equatable {
    public static let fileName = "manifest.json"
    public static let currentSchema = 2

    public struct RecipeInfo: Sendable, Codable, Equatable {
        public var name: String
        public var sha256: SHA256Digest
    }

    public struct SourceInfo: Sendable, Codable, Equatable {
        public var sha256: SHA256Digest
        public var origin: SourceOrigin?
        public var tree: SHA256Digest
    }

    public struct Input: Sendable, Codable, Equatable {
        public var name: String
        /// Relative to the vmfactory checkout when it lies inside it.
        public var path: String
        public var sha256: SHA256Digest
    }

    public struct ConfigInfo: Sendable, Codable, Equatable {
        public var base: String
        public var fragments: [Input]
        /// sha256 of the resolved `.config` (the `config` artifact).
        public var resolved: SHA256Digest
        public var verifiedSettings: Int
    }

    public struct MakeInfo: Sendable, Codable, Equatable {
        public var goals: [String]
        /// ARCH, CROSS_COMPILE and the KBUILD_BUILD_* settings.
        public var variables: [String: String]
    }

    public struct Keys: Sendable, Codable, Equatable {
        /// Every input known before configuring; decides whether a build is up to date.
        public var inputs: SHA256Digest
        /// The inputs together with the resolved config.
        public var build: SHA256Digest
    }

    public struct Artifact: Sendable, Codable, Equatable {
        public var part: Part
        public var name: String
        public var size: Int64
        public var sha256: SHA256Digest
        public var kind: KernelImage.Kind? = nil
        public var pvhEntry: String? = nil
        public var bootProtocol: String? = nil
    }

    /// What the kernel build recorded.
    public struct KernelPart: Sendable, Codable, Equatable {
        public var version: String
        /// `make kernelrelease`: what `uname -r` says in the guest.
        public var release: String
        /// The command line the recipe gives this target, for the runtime that boots it.
        public var cmdline: String
        public var source: SourceInfo
        public var patchSeries: String?
        public var patches: [Input]
        public var config: ConfigInfo
        public var toolchain: Toolchain
        public var make: MakeInfo
        public var keys: Keys
    }

    /// What the initrd build recorded.
    public struct InitrdPart: Sendable, Codable, Equatable {
        public var compression: InitrdSpec.Compression
        public var hostname: String
        public var entrypoint: [String]
        public var environment: [String]
        /// The init's C sources, the compiler that built it and its flags.
        public var initSources: [Input]
        public var compiler: String
        public var flags: [String]
        /// The recipe's own files, by destination in the initrd.
        public var files: [Input]
        public var entries: Int
        /// Covers every input of the init and the initrd.
        public var key: SHA256Digest
        /// The version of the run protocol (docs/run-protocol.md) the init speaks; nil for an
        /// init made before there was one.
        public var runProtocol: Int? = nil
    }

    /// Where a kernel part that was not compiled here came from: a build cache's entry.
    public struct CacheOrigin: Sendable, Codable, Equatable {
        /// The entry, `docker://host/repo:<input key>-<target>` or `oci:DIR:…`.
        public var reference: String
        /// The digest of the image index the entry named.
        public var index: String

        public init(reference: String, index: String) {
            self.reference = reference
            self.index = index
        }
    }

    public enum Part: String, Sendable, Codable {
        case kernel, initrd
    }

    public var schema: Int
    public var recipe: RecipeInfo
    public var target: Target
    public var sourceDateEpoch: Int
    public var kernel: KernelPart?
    public var initrd: InitrdPart?
    public var artifacts: [Artifact]
    /// Files beside the artifacts that vary from run to run (logs): listed, not hashed.
    public var logs: [String]
    /// Set when the kernel came from a build cache instead of a compile here.
    public var cachedFrom: CacheOrigin? = nil

    public func artifacts(of part: Part) -> [Artifact] {
        artifacts.filter { $0.part == part }
    }

    public func artifact(_ name: String) -> Artifact? {
        artifacts.first { $0.name == name }
    }

    public func encoded() throws -> Data {
        var data = try JSON.encode(self)
        data.append(0x0a)
        return data
    }

    public static func load(_ path: String) throws -> BuildManifest {
        let data = try FileStore.readData(path)
        return try JSON.decode(BuildManifest.self, from: data, what: "the build manifest \(path)", hint: "remove it and build again")
    }

    /// Checks every artifact in `directory` against its recorded size and sha256. Returns what
    /// differs; empty when the set is intact.
    public func verify(in directory: String, part: Part? = nil) async throws -> [String] {
        var problems: [String] = []
        for artifact in artifacts where part == nil || artifact.part == part {
            let path = directory + "/" + artifact.name
            guard let size = FileStore.fileSize(path) else {
                problems.append("\(artifact.name) is missing")
                continue
            }
            if size != artifact.size {
                problems.append("\(artifact.name) has \(size) bytes, the manifest says \(artifact.size)")
            } else {
                let digest = try await SHA256Digest.ofFile(at: path)
                if digest != artifact.sha256 { problems.append("\(artifact.name) has sha256 \(digest), the manifest says \(artifact.sha256)") }
            }
        }
        return problems
    }
}
