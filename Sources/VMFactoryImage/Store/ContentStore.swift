import Foundation
import VMFactoryCore

/// Every blob of every image vmfactory reads, by sha256: `<cache>/oci/blobs/sha256/<hex>`.
///
/// Bytes enter only through `ingest`, which hashes and counts them while they are written to a
/// temporary file and renames that file into place only when they match what is expected. A
/// blob in the store is therefore verified; readers trust it.
public struct ContentStore: Sendable {
    public let root: String

    public init(cacheDirectory: String) {
        root = cacheDirectory + "/oci"
    }

    var blobs: String { root + "/blobs/sha256" }

    public func path(_ digest: SHA256Digest) -> String { blobs + "/" + digest.hex }

    public func contains(_ digest: SHA256Digest) -> Bool { FileStore.isRegularFile(path(digest)) }

    /// Streams bytes in through `produce`, checking them against `digest` (when known) and
    /// `size` (when known). Returns the digest of what was stored. `what` names the blob in
    /// errors ("layer 2 of docker-archive:x.tar").
    @discardableResult
    public func ingest(
        _ what: String, digest expected: SHA256Digest?, size: Int64?,
        produce: (_ write: (UnsafeRawBufferPointer) throws -> Void) throws -> Void
    ) throws -> SHA256Digest {
        if let expected, contains(expected) {
            // Already verified when it came in; drain nothing, read nothing.
            return expected
        }
        try FileStore.createDirectory(blobs)
        let temporary = FileStore.temporaryName(for: blobs + "/" + (expected?.hex ?? "incoming"))
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o444)
        guard fd >= 0 else { throw VMFactoryError.io("cannot create", path: temporary) }
        var closed = false
        defer {
            if !closed { close(fd) }
            unlink(temporary)
        }
        var hasher = StreamingHasher()
        try produce { bytes in
            hasher.update(bytes)
            try FileStore.writeAll(fd, bytes, path: temporary)
        }
        let actual = hasher.finalize()
        if let size, hasher.byteCount != size {
            throw VMFactoryError(
                .digestMismatch, "\(what): \(hasher.byteCount) bytes where its descriptor says \(size) (sha256 \(actual))",
                hint: "the image is damaged or was changed after it was written; nothing was cached"
            )
        }
        if let expected, actual != expected {
            throw VMFactoryError(
                .digestMismatch, "\(what): expected sha256 \(expected), found \(actual)",
                hint: "the image is damaged or was changed after it was written; nothing was cached"
            )
        }
        close(fd)
        closed = true
        try FileStore.rename(temporary, to: path(actual))
        return actual
    }

    /// Copies a file in, verified.
    @discardableResult
    public func ingest(file: String, what: String, digest: SHA256Digest?, size: Int64?, cancellation: BlockingWork.Cancellation? = nil) throws -> SHA256Digest {
        try ingest(what, digest: digest, size: size) { write in
            try FileStore.forEachChunk(ofFile: file, cancellation: cancellation, write)
        }
    }

    /// Stores bytes already in memory (a manifest or config vmfactory wrote).
    @discardableResult
    public func ingest(data: Data, what: String) throws -> SHA256Digest {
        try ingest(what, digest: SHA256Digest.of(data), size: Int64(data.count)) { write in
            try data.withUnsafeBytes { try write($0) }
        }
    }

    /// A blob's bytes, which must be in the store.
    public func data(_ digest: SHA256Digest, what: String) throws -> Data {
        guard contains(digest) else {
            throw VMFactoryError(.notFound, "\(what): blob sha256:\(digest) is not in the content store", hint: "the image is incomplete; read it again")
        }
        return try FileStore.readData(path(digest))
    }

    /// Removes temporary files that killed runs left.
    public func removeLeftovers() {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: blobs)) ?? [] where name.hasSuffix(".partial") {
            let base = name.dropFirst().split(separator: ".").first.map(String.init) ?? ""
            FileStore.removeLeftovers(of: blobs + "/" + base)
        }
    }
}
