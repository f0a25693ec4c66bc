import Foundation
import VMFactoryCore
import VMFactoryImage

/// What publishing did to one tag.
public struct TagChange: Sendable, Codable, Equatable {
    public var tag: String
    /// The digest the tag named before, when it named one.
    public var previous: String?
    /// `new`, `unchanged` (it named this image already) or `replaced` (with --force).
    public var change: String
}

/// Publishing into an OCI image layout (image-layout.md): blobs first, each under its digest,
/// then `index.json` replaced in one rename, so an interrupted publish leaves the layout as it
/// was (at most with unreferenced blobs). A new layout is made under a temporary name and
/// renamed into place.
public enum LayoutWriter {
    static let layoutFile = #"{"imageLayoutVersion":"1.0.0"}"#

    /// The tag changes publishing `image` under `tags` would make to the layout whose
    /// index.json is `index`; throws when a tag names another image and `force` is off.
    static func changes(to index: ImageIndex?, image: Descriptor, tags: [String], force: Bool, name: String) throws -> [TagChange] {
        var changes: [TagChange] = []
        var refused: [String] = []
        for tag in tags {
            let existing = index?.manifests.first { $0.annotations?[AnnotationKey.refName] == tag }
            if let existing {
                if existing.digest == image.digest {
                    changes.append(TagChange(tag: tag, previous: existing.digest, change: "unchanged"))
                } else if force {
                    changes.append(TagChange(tag: tag, previous: existing.digest, change: "replaced"))
                } else {
                    refused.append("\(tag) (now \(existing.digest))")
                }
            } else {
                changes.append(TagChange(tag: tag, previous: nil, change: "new"))
            }
        }
        guard refused.isEmpty else {
            throw VMFactoryError(
                .invalidArgument, "\(name): the tag \(refused.joined(separator: ", ")) names another image than \(image.digest)",
                hint: "give --force to replace it, or publish under another --tag; nothing was changed"
            )
        }
        return changes
    }

    /// The index.json of the layout at `path`, nil when there is none yet; throws when the
    /// folder holds something else.
    static func existingIndex(_ path: String, name: String) throws -> ImageIndex? {
        guard FileStore.exists(path) else { return nil }
        guard FileStore.isDirectory(path) else {
            throw VMFactoryError(.invalidArgument, "\(name): \(path) is a file, not an OCI image layout", hint: "give a folder (oci:DIR) or the archive form (oci-archive:FILE)")
        }
        let indexPath = path + "/index.json"
        guard FileStore.isRegularFile(indexPath) else {
            let contents = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
            guard contents.isEmpty else {
                throw VMFactoryError(.invalidArgument, "\(name): \(path) holds files but no index.json: it is not an OCI image layout", hint: "give an empty or new folder, or a layout")
            }
            return nil
        }
        return try JSON.decode(ImageIndex.self, from: try FileStore.readData(indexPath), what: "\(name): index.json", hint: "repair or remove the layout")
    }

    /// Publishes `image` under `tags` into the layout at `path`.
    public static func publish(_ image: ArtifactImage, to path: String, tags: [String], force: Bool, name: String, cancellation: BlockingWork.Cancellation? = nil) throws -> [TagChange] {
        let existing = try existingIndex(path, name: name)
        let changes = try changes(to: existing, image: image.index, tags: tags, force: force, name: name)
        let fresh = !FileStore.exists(path)
        FileStore.removeLeftovers(of: path)
        let root = fresh ? FileStore.temporaryName(for: path) : path
        do {
            try write(image, into: root, index: existing, tags: tags, cancellation: cancellation)
            if fresh {
                try FileStore.rename(root, to: path)
                try? FileStore.synchronize(URL(fileURLWithPath: path).deletingLastPathComponent().path)
            }
        } catch {
            if fresh { try? FileStore.removeTree(root) }
            throw error
        }
        return changes
    }

    /// Copies the blobs in (verifying any already there) and flushes them, then writes
    /// index.json. Entries of other images are kept as they were, fields vmfactory does not
    /// know included.
    static func write(_ image: ArtifactImage, into root: String, index: ImageIndex?, tags: [String], cancellation: BlockingWork.Cancellation?) throws {
        let blobs = root + "/blobs/sha256"
        try FileStore.createDirectory(blobs)
        if !FileStore.isRegularFile(root + "/oci-layout") { try FileStore.writeDurably(Data(layoutFile.utf8), to: root + "/oci-layout") }
        for digest in image.digests {
            try cancellation?.check()
            let target = blobs + "/" + digest.hex
            FileStore.removeLeftovers(of: target)
            // A blob already there is reused only when it is what its name says.
            if FileStore.isRegularFile(target), (try? SHA256Digest.ofFile(at: target, cancellation: cancellation)) == digest { continue }
            if FileStore.exists(target) { try? FileStore.removeTree(target) }
            try FileStore.copyAtomically(image.blobs + "/" + digest.hex, to: target, mode: 0o444, cancellation: cancellation)
            try FileStore.synchronize(target)
        }
        try FileStore.synchronize(blobs)

        var document: [String: Any] = [:]
        if index != nil, let data = try? FileStore.readData(root + "/index.json"),
           let existing = try? JSONSerialization.jsonObject(with: data) as? [String: Any] {
            document = existing
        }
        var manifests = (document["manifests"] as? [[String: Any]] ?? []).filter { entry in
            guard let tag = (entry["annotations"] as? [String: Any])?[AnnotationKey.refName] as? String else { return true }
            return !tags.contains(tag)
        }
        for tag in tags {
            var entry = image.index
            entry.annotations = [AnnotationKey.refName: tag]
            guard let object = try JSONSerialization.jsonObject(with: try BlobJSON.encode(entry)) as? [String: Any] else {
                throw VMFactoryError(.internalError, "a descriptor did not encode as a JSON object")
            }
            manifests.append(object)
        }
        document["schemaVersion"] = 2
        document["mediaType"] = MediaType.ociIndex
        document["manifests"] = manifests
        let data = try JSONSerialization.data(withJSONObject: document, options: [.sortedKeys, .withoutEscapingSlashes])
        try FileStore.writeDurably(data, to: root + "/index.json")
    }
}
