import Foundation
import VMFactoryCore

/// One image, resolved to a platform: its manifest and config verified in the content store,
/// its layers named (fetched only when a disk is to be made of them).
public struct ResolvedImage: Sendable {
    /// A layer: where its blob is in the store once `ImageSource.fetchLayers` put it there.
    public struct Layer: Sendable {
        public var descriptor: Descriptor
        public var digest: SHA256Digest
        public var path: String
        /// "docker://x: layer 2 of 3 (sha256:…)", for messages.
        public var what: String
    }

    public var reference: String
    public var manifestDigest: SHA256Digest
    public var manifest: ImageManifest
    public var configDigest: SHA256Digest
    public var config: ImageConfig
    public var platform: Platform

    /// How a `wrongPlatform` error names the image's own platform.
    public static let platformDetail = "the image's platform: "

    /// The platform a `wrongPlatform` error names.
    public static func offeredPlatform(in error: VMFactoryError) -> Platform? {
        guard error.code == .wrongPlatform else { return nil }
        return error.details.first { $0.hasPrefix(platformDetail) }.flatMap { Platform(parsing: String($0.dropFirst(platformDetail.count))) }
    }
    public var layers: [Layer]
}

/// From an index or manifest to the manifest of the wanted platform and its config, each
/// fetched into the store and checked against its descriptor; the layers' descriptors checked
/// for what vmfactory can read.
struct ImageResolver {
    var store: ContentStore
    var reference: String
    var wanted: Platform
    /// Puts the blob a descriptor names into the store, verified, and returns its digest.
    var fetch: (Descriptor, String) throws -> SHA256Digest

    /// Resolves `root`, which names an index or a manifest.
    func resolve(_ root: Descriptor) throws -> ResolvedImage {
        let digest = try fetch(root, "\(reference): \(root.mediaType)")
        let data = try store.data(digest, what: reference)
        let probe = try JSON.decode(MediaTypeProbe.self, from: data, what: "\(reference): sha256:\(digest)")
        try Self.refuseSchema1(probe, mediaType: root.mediaType, reference: reference)
        if probe.manifests != nil, probe.config == nil {
            let index = try JSON.decode(ImageIndex.self, from: data, what: "\(reference): image index sha256:\(digest)")
            return try resolve(manifest: try choose(in: index))
        }
        return try resolve(manifestDigest: digest, data: data)
    }

    /// The entry of `index` for the wanted platform, or an error that lists those it has.
    func choose(in index: ImageIndex) throws -> Descriptor {
        let images = index.manifests.filter { MediaType.manifests.contains($0.mediaType) || MediaType.indexes.contains($0.mediaType) }
        if let match = images.first(where: { $0.platform?.matches(wanted) == true }) { return match }
        let offered = images.compactMap { $0.platform?.description }
        throw VMFactoryError(
            .notFound, "\(reference) has no image for \(wanted)",
            hint: offered.isEmpty ? "its index names no platforms" : "it has: \(offered.joined(separator: ", ")); choose one with --platform or --target"
        )
    }

    func resolve(manifest descriptor: Descriptor) throws -> ResolvedImage {
        if MediaType.indexes.contains(descriptor.mediaType) {
            // An index inside an index: resolve it the same way.
            return try resolve(descriptor)
        }
        let digest = try fetch(descriptor, "\(reference): manifest for \(wanted)")
        return try resolve(manifestDigest: digest, data: try store.data(digest, what: reference))
    }

    func resolve(manifestDigest: SHA256Digest, data: Data) throws -> ResolvedImage {
        let manifest = try JSON.decode(ImageManifest.self, from: data, what: "\(reference): manifest sha256:\(manifestDigest)")
        let configDigest = try fetch(manifest.config, "\(reference): config")
        let config = try JSON.decode(ImageConfig.self, from: try store.data(configDigest, what: reference), what: "\(reference): config sha256:\(configDigest)")
        if let platform = config.platform, !platform.matches(wanted) {
            throw VMFactoryError(
                .wrongPlatform, "\(reference) is an image for \(platform), not \(wanted)",
                hint: "choose it with --platform \(platform) (or --target), or use an image for \(wanted)",
                details: [ResolvedImage.platformDetail + platform.description]
            )
        }
        var layers: [ResolvedImage.Layer] = []
        for (index, layer) in manifest.layers.enumerated() {
            let what = "\(reference): layer \(index + 1) of \(manifest.layers.count) (\(layer.digest))"
            if MediaType.nonDistributable.contains(layer.mediaType) {
                throw VMFactoryError(.invalidArgument, "\(what) is non-distributable (\(layer.mediaType)): its bytes live elsewhere", hint: "copy the image with skopeo copy --dest-oci-accept-uncompressed-layers or rebuild it without foreign layers")
            }
            guard MediaType.layers.contains(layer.mediaType) else {
                throw VMFactoryError(.invalidArgument, "\(what) has the unknown media type \(layer.mediaType)", hint: "vmfactory reads tar layers, plain, gzip- or zstd-compressed")
            }
            let digest = try layer.sha256(in: what)
            layers.append(.init(descriptor: layer, digest: digest, path: store.path(digest), what: what))
        }
        return ResolvedImage(
            reference: reference, manifestDigest: manifestDigest, manifest: manifest, configDigest: configDigest,
            config: config, platform: config.platform ?? wanted, layers: layers
        )
    }

    static func refuseSchema1(_ probe: MediaTypeProbe, mediaType: String, reference: String) throws {
        let types = [probe.mediaType, mediaType].compactMap { $0 }
        if probe.schemaVersion == 1 || probe.fsLayers != nil || types.contains(MediaType.dockerSchema1) || types.contains(MediaType.dockerSchema1Signed) {
            throw VMFactoryError(
                .invalidArgument, "\(reference) is a Docker schema 1 image, which vmfactory does not read",
                hint: "convert it: skopeo copy --format v2s2 (or push it again with a current Docker)"
            )
        }
    }
}
