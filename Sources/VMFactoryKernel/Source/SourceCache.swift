import Foundation
import VMFactoryArchive
import VMFactoryCore
#if canImport(Glibc)
import Glibc
#endif

/// Where verified source bytes came from, kept beside each cache entry so that a manifest
/// can say so even when a later run finds the bytes in the cache.
public struct SourceOrigin: Sendable, Codable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable, Codable {
        case path, apt, url
    }

    public var kind: Kind
    /// A file path, `package=version:member`, or a URL.
    public var location: String

    public init(kind: Kind, location: String) {
        self.kind = kind
        self.location = location
    }

    public var description: String { "\(kind.rawValue) \(location)" }
}

/// A content-addressed store of source files: `sources/sha256/<hex>`.
///
/// Bytes enter only through `insert`, which hashes them while they are written to a
/// temporary file and renames that file into place only when the digest matches.
public struct SourceCache: Sendable {
    public let root: String

    public init(cacheDirectory: String) {
        root = cacheDirectory + "/sources"
    }

    public func path(for digest: SHA256Digest) -> String { root + "/sha256/" + digest.hex }
    private func originPath(for digest: SHA256Digest) -> String { path(for: digest) + ".origin.json" }
    var temporaryDirectory: String { root + "/tmp" }

    public func contains(_ digest: SHA256Digest) -> Bool {
        FileStore.isRegularFile(path(for: digest))
    }

    public func origin(of digest: SHA256Digest) -> SourceOrigin? {
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: originPath(for: digest))) else { return nil }
        return try? JSONDecoder().decode(SourceOrigin.self, from: data)
    }

    /// A sink that hashes and stores what a producer writes.
    public final class Sink: @unchecked Sendable {
        fileprivate let fd: Int32
        fileprivate let temporary: String
        fileprivate var hasher = StreamingHasher()
        public var bytesWritten: Int64 { hasher.byteCount }

        fileprivate init(fd: Int32, temporary: String) {
            self.fd = fd
            self.temporary = temporary
        }

        public func write(_ bytes: UnsafeRawBufferPointer) throws {
            hasher.update(bytes)
            try FileStore.writeAll(fd, bytes, path: temporary)
        }

        public func write(_ data: Data) throws {
            try data.withUnsafeBytes { try write($0) }
        }
    }

    /// Runs `produce` to write the bytes, then keeps them only if they hash to `expected`.
    /// On any failure the temporary file is removed and nothing is cached.
    @discardableResult
    public func insert(expected: SHA256Digest, origin: SourceOrigin, produce: (Sink) async throws -> Void) async throws -> String {
        try FileStore.createDirectory(temporaryDirectory)
        try FileStore.createDirectory(root + "/sha256")
        let temporary = FileStore.temporaryName(for: temporaryDirectory + "/" + expected.hex)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw VMFactoryError.io("cannot create", path: temporary) }
        let sink = Sink(fd: fd, temporary: temporary)
        var closed = false
        defer {
            if !closed { close(fd) }
            unlink(temporary)
        }
        try await produce(sink)
        let actual = sink.hasher.finalize()
        guard actual == expected else {
            throw VMFactoryError(
                .digestMismatch,
                "sha256 mismatch for \(origin): expected \(expected), got \(actual) (\(ByteCount.format(sink.bytesWritten)))",
                hint: "the bytes at \(origin.location) are not the pinned source; nothing was cached. Check the recipe's sha256 or use another source"
            )
        }
        guard fsync(fd) == 0 else { throw VMFactoryError.io("cannot flush", path: temporary) }
        close(fd)
        closed = true
        try FileStore.writeAtomically(try JSON.encode(origin), to: originPath(for: expected))
        let final = path(for: expected)
        try FileStore.rename(temporary, to: final)
        return final
    }

    /// Removes temporary files that no running process owns any more.
    public func removeStaleTemporaries() {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: temporaryDirectory)) ?? [] where name.hasSuffix(".partial") {
            // `.NAME.PID-RANDOM.partial`: NAME is a digest, or `apt` for a download folder.
            let base = name.dropFirst().split(separator: ".").first.map(String.init) ?? ""
            FileStore.removeLeftovers(of: temporaryDirectory + "/" + base)
        }
    }
}
