import Foundation
import VMFactoryCore
import VMFactoryImage
import VMFactoryKernel

/// A build cache in an OCI layout or a registry (`--cache-from`, `--cache-to`): one image per
/// target and kernel input key, tagged `<input key>-<target>`, in the form `vmfactory publish`
/// writes. Entries carry no checkout address or commit, only what the build made, so the same
/// inputs give the same entry on every machine and concurrent pushers of a key push the same
/// bytes.
public struct RegistryBuildCache: BuildCache {
    public enum Store: Sendable, Equatable {
        case layout(String)
        case registry(String)
    }

    public var store: Store
    public var skopeo: Skopeo
    public var console: Console
    public var temporaryDirectory: String

    /// `oci:DIR` or `docker://HOST/REPO`; the tag is the cache's own.
    public init(parsing text: String, currentDirectory: String, skopeo: Skopeo, console: Console, temporaryDirectory: String) throws {
        let destination = try PublishDestination(parsing: text, currentDirectory: currentDirectory)
        switch destination {
        case .layout(let path, nil): store = .layout(path)
        case .registry(let repository, nil): store = .registry(repository)
        case .layout, .registry:
            throw VMFactoryError(.invalidArgument, "\(text): a build cache names its tags itself (<input key>-<target>)", hint: "drop the tag: oci:DIR or docker://HOST/REPO")
        case .archive, .folder:
            throw VMFactoryError(.invalidArgument, "\(text): a build cache is an OCI layout or a registry", hint: "give oci:DIR or docker://HOST/REPO")
        }
        self.skopeo = skopeo
        self.console = console
        self.temporaryDirectory = temporaryDirectory
    }

    public var location: String {
        switch store {
        case .layout(let path): "oci:\(path)"
        case .registry(let repository): "docker://\(repository)"
        }
    }

    public static func tag(inputKey: SHA256Digest, target: Target) -> String { "\(inputKey.hex)-\(target.rawValue)" }

    public func reference(target: Target, inputKey: SHA256Digest) -> String {
        reference(Self.tag(inputKey: inputKey, target: target)).description
    }

    func reference(_ tag: String) -> ImageReference {
        switch store {
        case .layout(let path): .ociLayout(path: path, reference: tag)
        case .registry(let repository): .registry(repository + ":" + tag)
        }
    }

    public func fetch(recipe: String, target: Target, inputKey: SHA256Digest, into directory: String) async throws -> CachedBuild? {
        let tag = Self.tag(inputKey: inputKey, target: target)
        let reference = reference(tag)
        // A miss is a missing tag; anything else (unreachable, refused) is said by the caller.
        switch store {
        case .layout(let path):
            let index = FileStore.isRegularFile(path + "/index.json") ? try Puller.layoutIndex(path, name: location) : nil
            guard index?.manifests.contains(where: { $0.annotations?[AnnotationKey.refName] == tag }) == true else { return nil }
        case .registry(let repository):
            guard try await skopeo.rawManifest("docker://\(repository):\(tag)", what: "looking up") != nil else { return nil }
        }
        let puller = Puller(skopeo: skopeo, console: console, temporaryDirectory: temporaryDirectory)
        let result = try await puller.pull(reference, targets: [target], output: directory, force: true, locking: false)
        let folder = result.targets[0].directory
        let manifest = try BuildManifest.load(folder + "/" + BuildManifest.fileName)
        return CachedBuild(directory: folder, manifest: manifest, origin: .init(reference: reference.description, index: result.index))
    }

    public func store(recipe: String, target: Target, inputKey: SHA256Digest, outputDirectory: String) async throws -> String {
        let built = try await BuiltTarget.load(directory: outputDirectory, recipe: recipe, target: target)
        let tag = Self.tag(inputKey: inputKey, target: target)
        let destination: PublishDestination = switch store {
        case .layout(let path): .layout(path: path, tag: tag)
        case .registry(let repository): .registry(repository: repository, tag: tag)
        }
        let publisher = Publisher(skopeo: skopeo, console: console, temporaryDirectory: temporaryDirectory)
        // An entry that differs (damaged, or from other inputs under a wrong name) is replaced:
        // what a build of these inputs makes is the entry.
        let result = try await publisher.publish([built], provenance: Provenance(), to: destination, tags: [], force: true)
        return destination.description + " (\(result.index ?? ""))"
    }
}
