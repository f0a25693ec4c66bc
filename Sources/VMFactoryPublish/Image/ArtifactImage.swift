import Foundation
import VMFactoryArchive
import VMFactoryCore
import VMFactoryImage
import VMFactoryKernel

/// The published form of a build: an OCI image index with one regular image manifest per
/// target, each with one gzip layer holding `/boot/…` (owned 0:0, mtimes at the recipe's
/// source-date-epoch) and an ordinary image config. Every byte follows from the build's
/// files and manifest (and the checkout's address and commit), so the same build gives the
/// same index digest wherever it is published.
public struct ArtifactImage: Sendable {
    public struct Entry: Sendable {
        public var target: Target
        public var manifest: Descriptor
        public var layer: Descriptor
        public var config: Descriptor
    }

    /// The index, as a descriptor of its blob.
    public var index: Descriptor
    public var entries: [Entry]
    /// Every blob the image has (index, manifests, configs, layers), in `blobs`.
    public var digests: [SHA256Digest]
    /// The folder that holds them, named by hex digest.
    public var blobs: String

    /// Writes the blobs of `targets` into `blobs` (a folder, created) and returns the image.
    public static func build(_ targets: [BuiltTarget], provenance: Provenance, blobs: String, cancellation: BlockingWork.Cancellation? = nil) throws -> ArtifactImage {
        guard let first = targets.first else { throw VMFactoryError(.invalidArgument, "nothing to publish: no target") }
        try FileStore.createDirectory(blobs)
        var digests: [SHA256Digest] = []
        func store(_ data: Data) throws -> SHA256Digest {
            let digest = SHA256Digest.of(data)
            let path = blobs + "/" + digest.hex
            if !FileStore.isRegularFile(path) { try FileStore.writeAtomically(data, to: path, mode: 0o444) }
            digests.append(digest)
            return digest
        }

        var entries: [Entry] = []
        for built in targets {
            try cancellation?.check()
            let epoch = built.manifest.sourceDateEpoch
            var tarEntries = [ArchiveWriter.Entry(path: "boot", kind: .directory, mode: 0o755, mtime: Int64(epoch))]
            for file in built.files {
                let data = try file.data()
                guard SHA256Digest.of(data) == file.sha256 else {
                    throw VMFactoryError(.digestMismatch, "\(file.path) changed while it was being published", hint: "nothing was published; publish again once the build is done")
                }
                tarEntries.append(ArchiveWriter.Entry(path: "boot/" + file.name, kind: .file(data), mode: 0o644, mtime: Int64(epoch)))
            }
            // The layer's digest is of the gzip stream; its diff_id, in the config, of the tar.
            let plain = FileStore.temporaryName(for: blobs + "/layer.tar")
            let packed = FileStore.temporaryName(for: blobs + "/layer.tar.gz")
            defer {
                unlink(plain)
                unlink(packed)
            }
            try ArchiveWriter.write(tarEntries, to: plain, format: .paxTar, compression: .none)
            try ArchiveWriter.write(tarEntries, to: packed, format: .paxTar, compression: .gzip)
            let diffID = try SHA256Digest.ofFile(at: plain, cancellation: cancellation)
            let layerDigest = try SHA256Digest.ofFile(at: packed, cancellation: cancellation)
            let layerPath = blobs + "/" + layerDigest.hex
            if FileStore.isRegularFile(layerPath) { unlink(packed) } else { try FileStore.rename(packed, to: layerPath) }
            chmod(layerPath, 0o444)
            digests.append(layerDigest)
            let layer = Descriptor(mediaType: MediaType.ociLayerGzip, digest: "sha256:\(layerDigest)", size: FileStore.fileSize(layerPath) ?? 0)

            let annotations = Self.annotations(of: built, provenance: provenance)
            var config = ImageConfig()
            config.architecture = Platform.of(built.target).architecture
            config.os = "linux"
            config.created = rfc3339(epoch: epoch)
            var execution = ImageConfig.Execution()
            execution.Labels = annotations.filter { $0.key.hasPrefix("dev.vmfactory.") }
            config.config = execution
            config.rootfs = ImageConfig.RootFS(type: "layers", diff_ids: ["sha256:\(diffID)"])
            let configData = try BlobJSON.encode(config)
            let configDescriptor = Descriptor(mediaType: MediaType.ociConfig, digest: "sha256:\(try store(configData))", size: Int64(configData.count))

            let manifest = ImageManifest(
                schemaVersion: 2, mediaType: MediaType.ociManifest, config: configDescriptor, layers: [layer], annotations: annotations
            )
            let manifestData = try BlobJSON.encode(manifest)
            let manifestDescriptor = Descriptor(
                mediaType: MediaType.ociManifest, digest: "sha256:\(try store(manifestData))", size: Int64(manifestData.count),
                platform: Platform.of(built.target), annotations: annotations
            )
            entries.append(Entry(target: built.target, manifest: manifestDescriptor, layer: layer, config: configDescriptor))
        }

        var indexAnnotations: [String: String] = [
            AnnotationKey.created: rfc3339(epoch: targets.map(\.manifest.sourceDateEpoch).max() ?? first.manifest.sourceDateEpoch),
            AnnotationKey.title: "vmfactory \(first.manifest.recipe.name): kernel and initrd for \(targets.map(\.target.rawValue).joined(separator: ", "))",
            AnnotationKey.recipe: first.manifest.recipe.name,
        ]
        let releases = Set(targets.compactMap { $0.manifest.kernel?.release })
        if releases.count == 1, let release = releases.first { indexAnnotations[AnnotationKey.version] = release }
        if let source = provenance.source { indexAnnotations[AnnotationKey.source] = source }
        if let revision = provenance.revision { indexAnnotations[AnnotationKey.revision] = revision }
        let index = ImageIndex(schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: entries.map(\.manifest), annotations: indexAnnotations)
        let indexData = try BlobJSON.encode(index)
        let indexDescriptor = Descriptor(mediaType: MediaType.ociIndex, digest: "sha256:\(try store(indexData))", size: Int64(indexData.count))
        return ArtifactImage(index: indexDescriptor, entries: entries, digests: digests, blobs: blobs)
    }

    /// A target's annotations, on its manifest and on its entry in the index.
    static func annotations(of built: BuiltTarget, provenance: Provenance) -> [String: String] {
        let manifest = built.manifest
        var annotations: [String: String] = [
            AnnotationKey.created: rfc3339(epoch: manifest.sourceDateEpoch),
            AnnotationKey.title: "vmfactory \(manifest.recipe.name) kernel and initrd for \(built.target)",
            AnnotationKey.recipe: manifest.recipe.name,
            AnnotationKey.target: built.target.rawValue,
        ]
        if let kernel = manifest.kernel {
            annotations[AnnotationKey.version] = kernel.release
            annotations[AnnotationKey.buildKey] = kernel.keys.build.hex
            annotations[AnnotationKey.inputKey] = kernel.keys.inputs.hex
            annotations[AnnotationKey.cmdline] = kernel.cmdline
        }
        if let kernel = built.bootKernel {
            annotations[AnnotationKey.kernelSHA256] = kernel.sha256.hex
            annotations[AnnotationKey.kernelPath] = "/boot/" + kernel.name
        }
        if let initrd = built.initrd {
            annotations[AnnotationKey.initrdSHA256] = initrd.sha256.hex
            annotations[AnnotationKey.initrdPath] = "/boot/" + initrd.name
        }
        if let source = provenance.source { annotations[AnnotationKey.source] = source }
        if let revision = provenance.revision { annotations[AnnotationKey.revision] = revision }
        return annotations
    }
}
