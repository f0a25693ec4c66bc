import CArchive
import Foundation
import VMFactoryArchive
import VMFactoryCore

/// What `docker save` (and podman save, skopeo's docker-archive:) write: a tar with
/// `manifest.json` naming each image's config and layer tars, or, written by older Dockers,
/// only `repositories` and a folder per layer whose `json` names its parent.
///
/// The layers are uncompressed, so their sha256 is the config's `rootfs.diff_ids`: checked
/// here. vmfactory stores the files and writes an OCI manifest for them, the one internal form.
struct DockerArchive {
    var store: ContentStore
    var path: String
    var name: String

    struct Entry: Decodable {
        var Config: String
        var RepoTags: [String]?
        var Layers: [String]
    }

    /// `./x` and `x` name the same entry.
    static func normalized(_ path: String) -> String {
        var name = Substring(path)
        while name.hasPrefix("./") { name = name.dropFirst(2) }
        while name.hasPrefix("/") { name = name.dropFirst() }
        return String(name)
    }

    func resolve(tag: String?, platform: Platform, cancellation: BlockingWork.Cancellation) throws -> ResolvedImage {
        guard FileStore.isRegularFile(path) else { throw VMFactoryError(.notFound, "\(name): no file \(path)") }
        // Every file of the archive into the store; the small JSON files also kept at hand.
        var files: [String: (digest: SHA256Digest, size: Int64)] = [:]
        var documents: [String: Data] = [:]
        let reader = try ArchiveReader(path: path)
        while let entry = try reader.nextEntry() {
            try cancellation.check()
            guard archive_entry_filetype(entry) == 0o100000 else { continue }
            let entryName = Self.normalized(reader.currentPath)
            // JSON documents are small; layers (`ID/layer.tar`, `HEX.tar`, or `blobs/sha256/HEX`
            // since Docker 25) are not kept in memory.
            let isDocument = entryName == "manifest.json" || entryName == "repositories" || entryName.hasSuffix("json")
            var size: Int64 = 0
            var small = Data()
            let digest = try store.ingest("\(name): \(entryName)", digest: nil, size: nil) { write in
                try reader.readData { chunk in
                    size += Int64(chunk.count)
                    if isDocument { small.append(contentsOf: chunk) }
                    try write(chunk)
                }
            }
            files[entryName] = (digest, size)
            if isDocument { documents[entryName] = small }
        }
        let (configPath, layerPaths) = try choose(tag: tag, documents: documents)
        guard let config = files[configPath] else { throw VMFactoryError(.notFound, "\(name): the archive lacks \(configPath)") }
        var layers: [Descriptor] = []
        for layerPath in layerPaths {
            guard let layer = files[Self.normalized(layerPath)] else { throw VMFactoryError(.notFound, "\(name): the archive lacks the layer \(layerPath)") }
            let mediaType = try RootfsTarball.mediaType(of: store.path(layer.digest))
            layers.append(Descriptor(mediaType: mediaType, digest: "sha256:" + layer.digest.hex, size: layer.size))
        }
        try checkDiffIDs(configData: try store.data(config.digest, what: name), layers: layers)
        let manifest = ImageManifest(
            schemaVersion: 2, mediaType: MediaType.dockerManifest,
            config: Descriptor(mediaType: MediaType.dockerConfig, digest: "sha256:" + config.digest.hex, size: config.size),
            layers: layers, annotations: nil
        )
        let data = try JSON.encode(manifest)
        let digest = try store.ingest(data: data, what: "\(name): manifest")
        let resolver = ImageResolver(store: store, reference: name, wanted: platform) { descriptor, what in
            try descriptor.sha256(in: what)
        }
        return try resolver.resolve(manifestDigest: digest, data: data)
    }

    /// The config and layers of the image `tag` names (or of the only image), from
    /// `manifest.json`, else from `repositories` and each layer's parent.
    func choose(tag: String?, documents: [String: Data]) throws -> (config: String, layers: [String]) {
        if let data = documents["manifest.json"] {
            let entries = try JSON.decode([Entry].self, from: data, what: "\(name): manifest.json")
            let tags = entries.flatMap { $0.RepoTags ?? [] }
            if let tag {
                guard let found = entries.first(where: { ($0.RepoTags ?? []).contains(tag) || ($0.RepoTags ?? []).contains("docker.io/library/" + tag) }) else {
                    throw VMFactoryError(.notFound, "\(name): no image tagged '\(tag)'", hint: tags.isEmpty ? "the archive names no tags" : "its tags: \(tags.joined(separator: ", "))")
                }
                return (Self.normalized(found.Config), found.Layers)
            }
            guard entries.count == 1, let only = entries.first else {
                throw VMFactoryError(.invalidArgument, "\(name) holds \(entries.count) images; say which", hint: "append :NAME:TAG, one of: \(tags.joined(separator: ", "))")
            }
            return (Self.normalized(only.Config), only.Layers)
        }
        guard let data = documents["repositories"] else {
            throw VMFactoryError(.invalidArgument, "\(name) is not a docker-archive (neither manifest.json nor repositories inside)", hint: "write it with docker save, podman save or skopeo copy … docker-archive:FILE")
        }
        return try chooseLegacy(tag: tag, repositories: data, documents: documents)
    }

    /// `repositories` is `{"NAME": {"TAG": "LAYER-ID"}}`; each `LAYER-ID/json` names its
    /// `parent`, down to the base. The top layer's json is the image's config.
    func chooseLegacy(tag: String?, repositories: Data, documents: [String: Data]) throws -> (config: String, layers: [String]) {
        let names = try JSON.decode([String: [String: String]].self, from: repositories, what: "\(name): repositories")
        let all = names.flatMap { repo, tags in tags.map { ("\(repo):\($0.key)", $0.value) } }.sorted { $0.0 < $1.0 }
        let chosen: String
        if let tag {
            guard let found = all.first(where: { $0.0 == tag }) else { throw VMFactoryError(.notFound, "\(name): no image tagged '\(tag)'", hint: "its tags: \(all.map(\.0).joined(separator: ", "))") }
            chosen = found.1
        } else {
            guard all.count == 1 else { throw VMFactoryError(.invalidArgument, "\(name) holds \(all.count) images; say which", hint: "append :NAME:TAG, one of: \(all.map(\.0).joined(separator: ", "))") }
            chosen = all[0].1
        }
        struct Layer: Decodable { var parent: String? }
        var layers: [String] = []
        var id: String? = chosen
        while let current = id {
            guard let json = documents[current + "/json"], layers.count < 1000 else { throw VMFactoryError(.notFound, "\(name): the archive lacks \(current)/json") }
            layers.insert(current + "/layer.tar", at: 0)
            id = try JSON.decode(Layer.self, from: json, what: "\(name): \(current)/json").parent
        }
        return (chosen + "/json", layers)
    }

    /// The config's `rootfs.diff_ids` name the uncompressed layers: here, the layer files.
    func checkDiffIDs(configData: Data, layers: [Descriptor]) throws {
        let config = try JSON.decode(ImageConfig.self, from: configData, what: "\(name): config")
        guard let diffIDs = config.rootfs?.diff_ids else { return }
        guard diffIDs.count == layers.count else {
            throw VMFactoryError(.digestMismatch, "\(name): the config lists \(diffIDs.count) layers, the archive has \(layers.count)")
        }
        // A diff_id is the digest of the uncompressed layer: comparable where the layer is plain.
        for (index, (expected, layer)) in zip(diffIDs, layers).enumerated() where layer.mediaType == MediaType.ociLayer && expected != layer.digest {
            throw VMFactoryError(
                .digestMismatch, "\(name): layer \(index + 1): expected \(expected) (the config's diff_id), found \(layer.digest)",
                hint: "the archive was changed after it was written"
            )
        }
    }
}

/// A plain root file system tarball as a one-layer image, with an image config from a file
/// (`--config`) or an empty one.
struct RootfsTarball {
    var store: ContentStore
    var path: String
    var configFile: String?
    var name: String

    func resolve(platform: Platform, cancellation: BlockingWork.Cancellation) throws -> ResolvedImage {
        guard FileStore.isRegularFile(path) else { throw VMFactoryError(.notFound, "\(name): no file \(path)") }
        let layer = try store.ingest(file: path, what: name, digest: nil, size: nil, cancellation: cancellation)
        let size = FileStore.fileSize(path) ?? 0
        let mediaType = try Self.mediaType(of: store.path(layer))
        var config = ImageConfig()
        if let configFile {
            config = try JSON.decode(ImageConfig.self, from: try FileStore.readData(configFile), what: "the image config \(configFile)")
        }
        config.os = config.os ?? platform.os
        config.architecture = config.architecture ?? platform.architecture
        if config.rootfs == nil, mediaType == MediaType.ociLayer {
            config.rootfs = .init(type: "layers", diff_ids: ["sha256:" + layer.hex])
        }
        let configData = try JSON.encode(config)
        let configDigest = try store.ingest(data: configData, what: "\(name): config")
        let manifest = ImageManifest(
            schemaVersion: 2, mediaType: MediaType.ociManifest,
            config: Descriptor(mediaType: MediaType.ociConfig, digest: "sha256:" + configDigest.hex, size: Int64(configData.count)),
            layers: [Descriptor(mediaType: mediaType, digest: "sha256:" + layer.hex, size: size)], annotations: nil
        )
        let data = try JSON.encode(manifest)
        let digest = try store.ingest(data: data, what: "\(name): manifest")
        let resolver = ImageResolver(store: store, reference: name, wanted: platform) { descriptor, what in
            try descriptor.sha256(in: what)
        }
        return try resolver.resolve(manifestDigest: digest, data: data)
    }

    /// gzip and zstd by their magic numbers; anything else is taken for a plain tar.
    static func mediaType(of path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VMFactoryError.io("cannot read", path: path) }
        defer { close(fd) }
        var magic = [UInt8](repeating: 0, count: 4)
        let count = read(fd, &magic, 4)
        if count >= 2, magic[0] == 0x1f, magic[1] == 0x8b { return MediaType.ociLayerGzip }
        if count == 4, magic == [0x28, 0xb5, 0x2f, 0xfd] { return MediaType.ociLayerZstd }
        return MediaType.ociLayer
    }
}
