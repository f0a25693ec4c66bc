import Foundation
import VMFactoryCore

/// Registries through skopeo, which knows the auth files, mirrors and TLS settings users
/// already have: `skopeo inspect --raw` for the index, the chosen platform's manifest and its
/// config, then, when a disk is to be made, `skopeo copy` of that manifest by digest into a
/// temporary OCI layout whose layers go into the store.
extension ImageSource {
    /// `HOST/REPO` and the tag or digest of `HOST/REPO[:TAG|@DIGEST]` (a port's colon is not a tag's).
    public static func split(repository name: String) -> (repository: String, tag: String?, digest: String?) {
        if let at = name.firstIndex(of: "@") {
            return (String(name[..<at]), nil, String(name[name.index(after: at)...]))
        }
        let slash = name.lastIndex(of: "/") ?? name.startIndex
        if let colon = name[slash...].lastIndex(of: ":") {
            return (String(name[..<colon]), String(name[name.index(after: colon)...]), nil)
        }
        return (name, nil, nil)
    }

    /// skopeo with this source's registry options and environment.
    var skopeoTool: Skopeo { Skopeo(registry: registry, environment: environment, runner: runner) }

    func skopeo(_ subcommand: String, _ arguments: [String], source: Bool) -> Command {
        skopeoTool.command(subcommand, arguments, side: source && subcommand == "copy" ? .source : .only)
    }

    func resolveRegistry(_ name: String, platform: Platform) async throws -> ResolvedImage {
        let reference = "docker://" + name
        let (repository, _, _) = Self.split(repository: name)
        let raw = try await rawDocument(skopeo("inspect", ["--raw", reference], source: true), reference: reference, what: "reading the manifest of")
        let rootDigest = try store.ingest(data: raw, what: "\(reference): manifest")
        let probe = try JSON.decode(MediaTypeProbe.self, from: raw, what: "\(reference): what the registry sent")
        try ImageResolver.refuseSchema1(probe, mediaType: probe.mediaType ?? "", reference: reference)
        let inStore = ImageResolver(store: store, reference: reference, wanted: platform) { descriptor, what in
            try verifiedInStore(descriptor, what: what)
        }

        // The manifest of the wanted platform, by digest, then its config: small documents.
        // Layers come only when a disk is to be made (`fetchLayers`).
        var manifestDigest = rootDigest
        var manifestData = raw
        if probe.manifests != nil, probe.config == nil {
            let index = try JSON.decode(ImageIndex.self, from: raw, what: "\(reference): image index")
            let chosen = try inStore.choose(in: index)
            manifestDigest = try chosen.sha256(in: reference)
            manifestData = try await document(chosen, of: "docker://\(repository)@sha256:\(manifestDigest.hex)", config: false, reference: reference)
        }
        let manifest = try JSON.decode(ImageManifest.self, from: manifestData, what: "\(reference): manifest sha256:\(manifestDigest)")
        try await document(manifest.config, of: "docker://\(repository)@sha256:\(manifestDigest.hex)", config: true, reference: reference)
        return try inStore.resolve(manifestDigest: manifestDigest, data: manifestData)
    }

    /// A manifest (or with `config`, the config) that `descriptor` names, into the store
    /// verified, unless it is there already.
    @discardableResult
    func document(_ descriptor: Descriptor, of image: String, config: Bool, reference: String) async throws -> Data {
        let digest = try descriptor.sha256(in: reference)
        if !store.contains(digest) {
            let arguments = (config ? ["--config"] : []) + ["--raw", image]
            let data = try await rawDocument(skopeo("inspect", arguments, source: true), reference: reference, what: "reading the \(config ? "config" : "manifest") of")
            let what = "\(reference): \(config ? "config" : "manifest") \(descriptor.digest)"
            try store.ingest(what, digest: digest, size: descriptor.size) { write in try data.withUnsafeBytes { try write($0) } }
        }
        return try store.data(digest, what: reference)
    }

    /// What `skopeo inspect --raw` prints: the document's bytes exactly as the registry sent them.
    func rawDocument(_ command: Command, reference: String, what: String) async throws -> Data {
        let result = try await runSkopeo(command, reference: reference, what: what)
        return Data(result.output.utf8)
    }

    /// `skopeo copy` of the image's manifest by digest into a temporary layout, whose layers
    /// then go into the store, verified.
    func pullLayers(of image: ResolvedImage, name: String) async throws {
        let reference = "docker://" + name
        let (repository, _, _) = Self.split(repository: name)
        let layout = FileStore.temporaryName(for: temporaryDirectory + "/registry")
        try FileStore.createDirectory(temporaryDirectory)
        defer { try? FileStore.removeTree(layout) }
        console.info("rootfs: skopeo copy \(repository)@sha256:\(image.manifestDigest.short)… (\(image.platform), \(image.layers.count) layers)")
        _ = try await runSkopeo(
            skopeo("copy", ["--quiet", "docker://\(repository)@sha256:\(image.manifestDigest.hex)", "oci:\(layout):image"], source: true),
            reference: reference, what: "copying"
        )
        try await BlockingWork.run("reading what skopeo copied") { cancellation in
            for layer in image.layers {
                try ingestFromLayout(layout, layer.descriptor, what: layer.what, cancellation: cancellation)
            }
        }
    }

    static func skopeoMessage(_ output: String) -> String? { Skopeo.message(output) }

    func runSkopeo(_ command: Command, reference: String, what: String) async throws -> CommandResult {
        try await skopeoTool.run(command, reference: reference, what: what)
    }
}
