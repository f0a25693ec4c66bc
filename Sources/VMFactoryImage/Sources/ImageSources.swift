import Foundation
import VMFactoryArchive
import VMFactoryCore

/// How to reach a registry: skopeo's own options, passed through.
public struct RegistryOptions: Sendable {
    /// `USER:PASSWORD` for `--creds`.
    public var credentials: String?
    public var tlsVerify = true
    /// skopeo's `--command-timeout`: a registry that does not answer fails within it.
    public var timeout: Duration = .seconds(60)

    public init() {}
}

/// Brings an image from wherever it is into the content store and resolves it to a platform.
public struct ImageSource: Sendable {
    public var store: ContentStore
    public var runner: any ProcessRunner
    public var console: Console
    /// The host environment, for what skopeo reads (REGISTRY_AUTH_FILE, XDG_RUNTIME_DIR).
    public var environment: [String: String]
    public var temporaryDirectory: String
    public var registry = RegistryOptions()
    /// For `tar:`: an image config file to go with the root file system.
    public var configFile: String?

    public init(store: ContentStore, runner: any ProcessRunner, console: Console, environment: [String: String], temporaryDirectory: String) {
        self.store = store
        self.runner = runner
        self.console = console
        self.environment = environment
        self.temporaryDirectory = temporaryDirectory
    }

    public func resolve(_ reference: ImageReference, platform: Platform) async throws -> ResolvedImage {
        store.removeLeftovers()
        FileStore.removeLeftovers(of: temporaryDirectory + "/registry")
        switch reference {
        case .ociLayout(let path, let tag):
            return try await BlockingWork.run("reading \(reference)") { _ in
                try resolveLayout(path, tag: tag, name: reference.description, platform: platform)
            }
        case .ociArchive(let path, let tag):
            return try await BlockingWork.run("reading \(reference)") { cancellation in
                try resolveOCIArchive(path, tag: tag, name: reference.description, platform: platform, cancellation: cancellation)
            }
        case .dockerArchive(let path, let tag):
            return try await BlockingWork.run("reading \(reference)") { cancellation in
                try DockerArchive(store: store, path: path, name: reference.description).resolve(tag: tag, platform: platform, cancellation: cancellation)
            }
        case .registry(let name):
            return try await resolveRegistry(name, platform: platform)
        case .rootfsTarball(let path):
            let configFile = self.configFile
            return try await BlockingWork.run("reading \(reference)") { cancellation in
                try RootfsTarball(store: store, path: path, configFile: configFile, name: reference.description).resolve(platform: platform, cancellation: cancellation)
            }
        }
    }

    /// Puts the image's layers into the store, each checked against its descriptor: copied
    /// from a layout, already there for archives (they were read whole), pulled by skopeo from
    /// a registry when any is missing.
    public func fetchLayers(of image: ResolvedImage, from reference: ImageReference) async throws {
        switch reference {
        case .ociLayout(let path, _):
            try await BlockingWork.run("copying the layers of \(reference)") { cancellation in
                for layer in image.layers {
                    try ingestFromLayout(path, layer.descriptor, what: layer.what, cancellation: cancellation)
                }
            }
        case .ociArchive, .dockerArchive, .rootfsTarball:
            for layer in image.layers { _ = try verifiedInStore(layer.descriptor, what: layer.what) }
        case .registry(let name):
            if image.layers.contains(where: { !store.contains($0.digest) }) {
                try await pullLayers(of: image, name: name)
            }
            for layer in image.layers { _ = try verifiedInStore(layer.descriptor, what: layer.what) }
        }
    }

    /// A layout's blob into the store, verified.
    @discardableResult
    func ingestFromLayout(_ path: String, _ descriptor: Descriptor, what: String, cancellation: BlockingWork.Cancellation? = nil) throws -> SHA256Digest {
        let digest = try descriptor.sha256(in: what)
        if store.contains(digest) { return digest }
        let blob = path + "/blobs/sha256/" + digest.hex
        guard FileStore.isRegularFile(blob) else {
            throw VMFactoryError(.notFound, "\(what): the layout has no blob \(descriptor.digest)", hint: "the layout is incomplete; copy the image again")
        }
        return try store.ingest(file: blob, what: what, digest: digest, size: descriptor.size, cancellation: cancellation)
    }

    /// The descriptor `index.json` of a layout has for `tag` (a ref name or a digest); with no
    /// tag, its only entry.
    public static func entry(of index: ImageIndex, tag: String?, name: String) throws -> Descriptor {
        let tags = index.manifests.compactMap { $0.annotations?["org.opencontainers.image.ref.name"] }
        if let tag {
            if let found = index.manifests.first(where: { $0.annotations?["org.opencontainers.image.ref.name"] == tag || $0.digest == tag }) { return found }
            throw VMFactoryError(.notFound, "\(name): no image tagged '\(tag)'", hint: tags.isEmpty ? "the layout has no tags; give a digest" : "its tags: \(tags.joined(separator: ", "))")
        }
        guard index.manifests.count == 1, let only = index.manifests.first else {
            throw VMFactoryError(.invalidArgument, "\(name) holds \(index.manifests.count) images; say which", hint: tags.isEmpty ? "append :sha256:DIGEST" : "append one of its tags: \(tags.joined(separator: ", "))")
        }
        return only
    }

    func resolveLayout(_ path: String, tag: String?, name: String, platform: Platform) throws -> ResolvedImage {
        guard FileStore.isRegularFile(path + "/index.json") else {
            throw VMFactoryError(.notFound, "\(name): \(path) is not an OCI image layout (no index.json)", hint: "give the folder that `umoci init` or `skopeo copy … oci:DIR` made")
        }
        let index = try JSON.decode(ImageIndex.self, from: try FileStore.readData(path + "/index.json"), what: "\(name): index.json")
        let resolver = ImageResolver(store: store, reference: name, wanted: platform) { descriptor, what in
            try ingestFromLayout(path, descriptor, what: what)
        }
        return try resolver.resolve(try Self.entry(of: index, tag: tag, name: name))
    }

    /// Streams the archive's blobs into the store (each checked against the digest its name
    /// gives), then resolves its index.json as a layout's.
    func resolveOCIArchive(_ path: String, tag: String?, name: String, platform: Platform, cancellation: BlockingWork.Cancellation) throws -> ResolvedImage {
        guard FileStore.isRegularFile(path) else { throw VMFactoryError(.notFound, "\(name): no file \(path)") }
        let reader = try ArchiveReader(path: path)
        var indexData: Data?
        while try reader.nextEntry() != nil {
            try cancellation.check()
            let entry = DockerArchive.normalized(reader.currentPath)
            if entry == "index.json" {
                var data = Data()
                try reader.readData { data.append(contentsOf: $0) }
                indexData = data
            } else if entry.hasPrefix("blobs/sha256/"), let digest = SHA256Digest(hex: String(entry.dropFirst("blobs/sha256/".count))) {
                try store.ingest("\(name): blob sha256:\(digest)", digest: digest, size: nil) { write in try reader.readData(write) }
            }
        }
        guard let indexData else { throw VMFactoryError(.invalidArgument, "\(name) is not an OCI archive (no index.json inside)") }
        let index = try JSON.decode(ImageIndex.self, from: indexData, what: "\(name): index.json")
        let resolver = ImageResolver(store: store, reference: name, wanted: platform) { descriptor, what in
            try verifiedInStore(descriptor, what: what)
        }
        return try resolver.resolve(try Self.entry(of: index, tag: tag, name: name))
    }

    /// A blob that an earlier step ingested, with the size its descriptor says.
    func verifiedInStore(_ descriptor: Descriptor, what: String) throws -> SHA256Digest {
        let digest = try descriptor.sha256(in: what)
        guard store.contains(digest) else {
            throw VMFactoryError(.notFound, "\(what): blob \(descriptor.digest) is missing from the image", hint: "the image is incomplete; write it again")
        }
        let size = FileStore.fileSize(store.path(digest)) ?? -1
        guard size == descriptor.size else {
            throw VMFactoryError(.digestMismatch, "\(what): blob \(descriptor.digest) has \(size) bytes, its descriptor says \(descriptor.size)")
        }
        return digest
    }
}
