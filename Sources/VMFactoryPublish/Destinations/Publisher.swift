import Foundation
import VMFactoryArchive
import VMFactoryCore
import VMFactoryImage
import VMFactoryKernel

/// `vmfactory publish`: a recipe's verified build, as the multi-arch image (or plain files),
/// at one destination.
public struct Publisher: Sendable {
    public var skopeo: Skopeo
    public var console: Console
    /// Where the image is assembled before it goes out (the cache's tmp/).
    public var temporaryDirectory: String

    public init(skopeo: Skopeo, console: Console, temporaryDirectory: String) {
        self.skopeo = skopeo
        self.console = console
        self.temporaryDirectory = temporaryDirectory
    }

    public struct TargetResult: Sendable, Codable {
        public var target: Target
        public var platform: String
        public var manifest: String?
        public var layer: String?
        public var files: [FolderWriter.File]
    }

    public struct Result: Sendable, Codable {
        public var destination: String
        /// The image index's digest (absent for `dir:`).
        public var index: String?
        public var tags: [TagChange]
        public var targets: [TargetResult]
    }

    public func publish(_ targets: [BuiltTarget], provenance: Provenance, to destination: PublishDestination, tags extraTags: [String], force: Bool) async throws -> Result {
        var tags = (destination.tag.map { [$0] } ?? []) + extraTags
        if tags.isEmpty { tags = ["latest"] }
        for tag in tags where !PublishDestination.isValidTag(tag) {
            throw VMFactoryError(.invalidArgument, "'\(tag)' is not a valid tag", hint: "a tag is up to 128 of A-Z a-z 0-9 _ . - and starts with a letter, digit or _")
        }
        tags = tags.reduce(into: []) { if !$0.contains($1) { $0.append($1) } }
        let finalTags = tags
        let files = targets.map { built in
            TargetResult(
                target: built.target, platform: Platform.of(built.target).description, manifest: nil, layer: nil,
                files: built.files.map { FolderWriter.File(name: FolderWriter.folderName($0.name), sha256: $0.sha256, size: $0.size) }
            )
        }
        // One publisher at a time per destination on this machine: each reads, changes and
        // writes the destination's index.
        var lock: FileLock?
        switch destination {
        case .layout(let path, _), .archive(let path, _), .folder(let path):
            lock = try await Self.lock(path, console: console)
        case .registry:
            break
        }
        defer { lock?.release() }
        if case .folder(let path) = destination {
            try await BlockingWork.run("writing \(destination)") { cancellation in
                _ = try FolderWriter.write(targets, to: path, force: force, cancellation: cancellation)
            }
            return Result(destination: destination.description, index: nil, tags: [], targets: files)
        }

        try FileStore.createDirectory(temporaryDirectory)
        FileStore.removeLeftovers(of: temporaryDirectory + "/publish")
        let work = FileStore.temporaryName(for: temporaryDirectory + "/publish")
        defer { try? FileStore.removeTree(work) }
        console.info("publish: assembling the image for \(targets.map(\.target.rawValue).joined(separator: ", "))")
        let image = try await BlockingWork.run("assembling the image") { cancellation in
            try ArtifactImage.build(targets, provenance: provenance, blobs: work + "/blobs", cancellation: cancellation)
        }
        var results = files
        for (position, entry) in image.entries.enumerated() {
            results[position].manifest = entry.manifest.digest
            results[position].layer = entry.layer.digest
        }
        let changes: [TagChange]
        switch destination {
        case .layout(let path, _):
            changes = try await BlockingWork.run("writing \(destination)") { cancellation in
                try LayoutWriter.publish(image, to: path, tags: finalTags, force: force, name: destination.description, cancellation: cancellation)
            }
        case .archive(let path, _):
            let epoch = targets.map(\.manifest.sourceDateEpoch).max() ?? 0
            changes = try await BlockingWork.run("writing \(destination)") { cancellation in
                try ArchiveLayout.publish(image, to: path, tags: finalTags, force: force, mtime: epoch, work: work + "/archive", name: destination.description, cancellation: cancellation)
            }
        case .registry(let repository, _):
            changes = try await publish(image, repository: repository, tags: tags, force: force, work: work)
        case .folder:
            changes = []
        }
        for change in changes where change.change == "replaced" {
            console.warning("publish: \(change.tag) named \(change.previous ?? "?"); it now names \(image.index.digest)")
        }
        return Result(destination: destination.description, index: image.index.digest, tags: changes, targets: results)
    }

    /// The lock beside a destination path: `.NAME.lock` in its folder.
    static func lock(_ path: String, console: Console) async throws -> FileLock {
        let url = URL(fileURLWithPath: path)
        let folder = url.deletingLastPathComponent().path
        try FileStore.createDirectory(folder)
        return try await FileLock.acquire(folder + "/." + url.lastPathComponent + ".lock") {
            console.info("waiting: another vmfactory is writing \(FileStore.displayPath(path))")
        }
    }

    /// A registry: each tag checked first (an existing other image refused without --force),
    /// then `skopeo copy --all --preserve-digests` from a layout, then the tag read back.
    func publish(_ image: ArtifactImage, repository: String, tags: [String], force: Bool, work: String) async throws -> [TagChange] {
        var existing = ImageIndex(schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [])
        for tag in tags {
            let reference = "docker://\(repository):\(tag)"
            if let data = try await skopeo.rawManifest(reference, what: "reading") {
                existing.manifests.append(Descriptor(
                    mediaType: MediaType.ociIndex, digest: "sha256:\(SHA256Digest.of(data))", size: Int64(data.count), annotations: [AnnotationKey.refName: tag]
                ))
            }
        }
        let changes = try LayoutWriter.changes(to: existing, image: image.index, tags: tags, force: force, name: "docker://\(repository)")
        let layout = work + "/layout"
        _ = try await BlockingWork.run("writing the layout to push") { cancellation in
            try LayoutWriter.publish(image, to: layout, tags: ["publish"], force: true, name: "oci:\(layout)", cancellation: cancellation)
        }
        for change in changes where change.change != "unchanged" {
            let reference = "docker://\(repository):\(change.tag)"
            console.info("publish: skopeo copy --all to \(reference)")
            _ = try await skopeo.run(
                skopeo.command("copy", ["--all", "--preserve-digests", "--quiet", "oci:\(layout):publish", reference], side: .destination),
                reference: reference, what: "pushing to"
            )
            guard let data = try await skopeo.rawManifest(reference, what: "reading back"), SHA256Digest.of(data).hex == image.index.digest.dropFirst(7) else {
                throw VMFactoryError(.digestMismatch, "\(reference) does not name \(image.index.digest) after the push", hint: "another push to the tag came in between, or the registry rewrote the index; publish again")
            }
        }
        return changes
    }
}

/// The layout as a tar file: an existing archive is read into a layout first (its other
/// tags kept), the image published into it, and the whole written to a temporary name and
/// renamed over the file.
enum ArchiveLayout {
    static func publish(_ image: ArtifactImage, to path: String, tags: [String], force: Bool, mtime: Int, work: String, name: String, cancellation: BlockingWork.Cancellation) throws -> [TagChange] {
        FileStore.removeLeftovers(of: path)
        if FileStore.exists(path) {
            guard FileStore.isRegularFile(path) else {
                throw VMFactoryError(.invalidArgument, "\(name): \(path) is not a file", hint: "give a file name for oci-archive:, or oci:DIR for a folder")
            }
            try unpack(path, into: work, name: name, cancellation: cancellation)
        }
        let changes = try LayoutWriter.publish(image, to: work, tags: tags, force: force, name: name, cancellation: cancellation)
        var entries: [ArchiveWriter.Entry] = []
        for directory in ["blobs", "blobs/sha256"] {
            entries.append(ArchiveWriter.Entry(path: directory, kind: .directory, mode: 0o755, mtime: Int64(mtime)))
        }
        let blobs = (try? FileManager.default.contentsOfDirectory(atPath: work + "/blobs/sha256"))?.filter { SHA256Digest(hex: $0) != nil }.sorted() ?? []
        for blob in blobs {
            try cancellation.check()
            entries.append(ArchiveWriter.Entry(path: "blobs/sha256/" + blob, kind: .file(try FileStore.readData(work + "/blobs/sha256/" + blob)), mode: 0o444, mtime: Int64(mtime)))
        }
        for file in ["index.json", "oci-layout"] {
            entries.append(ArchiveWriter.Entry(path: file, kind: .file(try FileStore.readData(work + "/" + file)), mode: 0o644, mtime: Int64(mtime)))
        }
        try ArchiveWriter.write(entries, to: path, format: .paxTar)
        return changes
    }

    /// An OCI archive's index.json, oci-layout and blobs into `layout` (blobs are checked
    /// when they are used).
    static func unpack(_ path: String, into layout: String, name: String, cancellation: BlockingWork.Cancellation) throws {
        try FileStore.createDirectory(layout + "/blobs/sha256")
        let reader = try ArchiveReader(path: path, formats: .tar, hashing: false)
        var sawIndex = false
        while try reader.nextEntry() != nil {
            try cancellation.check()
            var entry = reader.currentPath
            while entry.hasPrefix("./") { entry.removeFirst(2) }
            let destination: String
            if entry == "index.json" || entry == "oci-layout" {
                destination = layout + "/" + entry
                sawIndex = sawIndex || entry == "index.json"
            } else if entry.hasPrefix("blobs/sha256/"), SHA256Digest(hex: String(entry.dropFirst("blobs/sha256/".count))) != nil {
                destination = layout + "/" + entry
            } else {
                continue
            }
            var data = Data()
            try reader.readData { data.append(contentsOf: $0) }
            try FileStore.writeAtomically(data, to: destination, mode: 0o444)
        }
        guard sawIndex else {
            throw VMFactoryError(.invalidArgument, "\(name): \(path) is not an OCI archive (no index.json inside)", hint: "give another file name, or move the file away")
        }
    }
}
