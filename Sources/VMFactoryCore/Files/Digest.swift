import COpenSSL
import Foundation
import Synchronization

/// A SHA-256 digest as lowercase hex.
public struct SHA256Digest: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    public let hex: String

    /// Accepts 64 hexadecimal digits in either case.
    public init?(hex: String) {
        let lowered = hex.lowercased()
        guard lowered.utf8.count == 64, lowered.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else {
            return nil
        }
        self.hex = lowered
    }

    init(bytes: some Sequence<UInt8>) {
        let digits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        for byte in bytes { text += [digits[Int(byte >> 4)], digits[Int(byte & 0x0f)]] }
        self.hex = String(decoding: text, as: UTF8.self)
    }

    public var description: String { hex }
    public var short: String { String(hex.prefix(12)) }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.hex < rhs.hex }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let digest = SHA256Digest(hex: text) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "not a sha256 digest: \(text)")
        }
        self = digest
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(hex)
    }

    public static func of(_ data: some DataProtocol) -> SHA256Digest {
        var hasher = StreamingHasher()
        for region in data.regions { region.withUnsafeBytes { hasher.update($0) } }
        return hasher.finalize()
    }

    public static func of(_ string: String) -> SHA256Digest {
        of(Data(string.utf8))
    }

    /// Hashes a file by streaming it, never holding it whole in memory. For small files
    /// (fragments, patches); large ones take the async form.
    public static func ofFile(at path: String, cancellation: BlockingWork.Cancellation? = nil) throws -> SHA256Digest {
        var hasher = StreamingHasher()
        try FileStore.forEachChunk(ofFile: path, cancellation: cancellation) { hasher.update($0) }
        return hasher.finalize()
    }

    /// Hashes a file on a thread of its own, stopping when the calling task is cancelled.
    public static func ofFile(at path: String) async throws -> SHA256Digest {
        try await BlockingWork.run("hashing \(FileStore.displayPath(path))") { cancellation in
            try ofFile(at: path, cancellation: cancellation)
        }
    }
}

/// A large file's sha256 per piece, computed on every core at once: a check of every byte
/// that takes a fraction of a whole-file sha256 (which is one sequential stream).
public struct PieceDigests: Codable, Sendable, Equatable {
    public var pieceSize: Int
    public var pieces: [SHA256Digest]

    public static let defaultPieceSize = 8 << 20

    public static func of(file path: String, pieceSize: Int = defaultPieceSize) async throws -> PieceDigests {
        try await BlockingWork.run("hashing \(FileStore.displayPath(path))") { cancellation in
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw VMFactoryError.io("cannot read", path: path) }
            defer { close(fd) }
            var st = stat()
            guard fstat(fd, &st) == 0 else { throw VMFactoryError.io("cannot read", path: path) }
            let size = off_t(st.st_size)
            let count = Int((Int64(size) + Int64(pieceSize) - 1) / Int64(pieceSize))
            let results = Mutex([SHA256Digest?](repeating: nil, count: count))
            let failed = Atomic<Bool>(false)
            DispatchQueue.concurrentPerform(iterations: count) { index in
                guard !failed.load(ordering: .relaxed), !cancellation.isCancelled else { return }
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
                defer { buffer.deallocate() }
                var hasher = StreamingHasher()
                var offset = off_t(index) * off_t(pieceSize)
                let end = min(offset + off_t(pieceSize), size)
                while offset < end {
                    let got = pread(fd, buffer.baseAddress, min(buffer.count, Int(end - offset)), offset)
                    if got < 0, errno == EINTR { continue }
                    guard got > 0 else {
                        failed.store(true, ordering: .relaxed)
                        return
                    }
                    hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<got]))
                    offset += off_t(got)
                }
                let digest = hasher.finalize()
                results.withLock { $0[index] = digest }
            }
            try cancellation.check()
            let pieces = results.withLock { $0 }
            guard !failed.load(ordering: .relaxed), pieces.allSatisfy({ $0 != nil }) else { throw VMFactoryError.io("cannot read", path: path) }
            return PieceDigests(pieceSize: pieceSize, pieces: pieces.map { $0! })
        }
    }
}

/// Incremental SHA-256 for bytes that are streamed once: downloads, copies, extraction input.
/// The system's libcrypto does the work (OpenSSL's SHA-256, with the CPU's SHA extensions
/// where it has them). A value: a copy hashes on by itself.
public struct StreamingHasher {
    /// One libcrypto digest context, freed with the last copy that holds it.
    private final class Context {
        let pointer: OpaquePointer

        init() {
            guard let pointer = EVP_MD_CTX_new(), EVP_DigestInit_ex(pointer, EVP_sha256(), nil) == 1 else {
                fatalError("libcrypto cannot start a SHA-256 digest")
            }
            self.pointer = pointer
        }

        init(copying other: Context) {
            guard let pointer = EVP_MD_CTX_new(), EVP_MD_CTX_copy_ex(pointer, other.pointer) == 1 else {
                fatalError("libcrypto cannot copy a SHA-256 digest")
            }
            self.pointer = pointer
        }

        deinit { EVP_MD_CTX_free(pointer) }
    }

    private var context = Context()
    public private(set) var byteCount: Int64 = 0

    public init() {}

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        if !isKnownUniquelyReferenced(&context) { context = Context(copying: context) }
        if let base = bytes.baseAddress, bytes.count > 0 { EVP_DigestUpdate(context.pointer, base, bytes.count) }
        byteCount += Int64(bytes.count)
    }

    public mutating func update(_ data: Data) {
        data.withUnsafeBytes { update($0) }
    }

    /// The digest of what was hashed so far; the hasher itself can go on.
    public func finalize() -> SHA256Digest {
        let done = Context(copying: context)
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        guard EVP_DigestFinal_ex(done.pointer, &digest, &length) == 1, length == 32 else {
            fatalError("libcrypto cannot finish a SHA-256 digest")
        }
        return SHA256Digest(bytes: digest.prefix(32))
    }
}

/// Builds a key from named parts, so that reordering or renaming a part changes the key.
public struct KeyBuilder: Sendable {
    private var text: String

    public init(_ domain: String) {
        text = domain + "\n"
    }

    public mutating func add(_ name: String, _ value: String) {
        // Length-prefixed so that no value can forge a neighbouring part.
        text += "\(name) \(value.utf8.count) \(value)\n"
    }

    public var digest: SHA256Digest { .of(text) }
}
