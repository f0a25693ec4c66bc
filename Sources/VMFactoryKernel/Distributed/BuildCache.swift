import Foundation
import VMFactoryCore

/// A store of finished builds shared between machines, addressed by the kernel's input key:
/// an OCI layout or a registry, holding what `vmfactory publish` writes (see VMFactoryPublish).
/// Every input that reaches the images is in the key and the builds are reproducible, so an
/// entry is what a local build would make, and two machines that push the same key push the
/// same bytes.
public protocol BuildCache: Sendable {
    /// Where the entries are, for messages (`docker://host/repo`, `oci:/path`).
    var location: String { get }

    /// The reference of the entry for `target`'s kernel inputs.
    func reference(target: Target, inputKey: SHA256Digest) -> String

    /// The entry for `target`'s kernel inputs, pulled and verified into a folder below
    /// `directory`; nil when the cache has none. Throws when an entry is there but does not
    /// verify.
    func fetch(recipe: String, target: Target, inputKey: SHA256Digest, into directory: String) async throws -> CachedBuild?

    /// Puts the verified set in `outputDirectory` into the cache; returns the entry's reference.
    func store(recipe: String, target: Target, inputKey: SHA256Digest, outputDirectory: String) async throws -> String
}

/// A cache entry on this machine, verified.
public struct CachedBuild: Sendable {
    /// A folder laid out as an output folder (without the init and the logs).
    public var directory: String
    public var manifest: BuildManifest
    public var origin: BuildManifest.CacheOrigin

    public init(directory: String, manifest: BuildManifest, origin: BuildManifest.CacheOrigin) {
        self.directory = directory
        self.manifest = manifest
        self.origin = origin
    }
}
