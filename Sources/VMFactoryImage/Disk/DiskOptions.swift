import Foundation
import VMFactoryCore

/// How a root disk is made from an image: its size, its file format and, for qcow2, how its
/// clusters are compressed.
public struct DiskOptions: Sendable, Hashable {
    public enum Size: Sendable, Hashable, CustomStringConvertible {
        /// The content and at least this much free space.
        case headroom(Int64)
        /// Exactly this many bytes (rounded up to a whole MiB).
        case absolute(Int64)

        public var description: String {
            switch self {
            case .headroom(let bytes): return "+\(bytes)"
            case .absolute(let bytes): return "\(bytes)"
            }
        }
    }

    public enum Format: String, Sendable, Hashable, CaseIterable {
        case qcow2, raw

        public var fileName: String { "disk." + rawValue }
    }

    /// qcow2's cluster compression. zstd (QEMU 5.1 and later read it) makes disks about a
    /// third of their uncompressed size at little cost; zlib is what every qcow2 reader knows,
    /// slower to write; none keeps every cluster as it is. Guests' writes are never compressed.
    public enum Compression: String, Sendable, Hashable, CaseIterable {
        case zstd, zlib, none
    }

    public static let defaultHeadroom: Int64 = 256 << 20

    public var size: Size
    public var format: Format
    /// For qcow2 only; raw disks are never compressed.
    public var compression: Compression

    public init(size: Size = .headroom(defaultHeadroom), format: Format = .qcow2, compression: Compression = .zstd) {
        self.size = size
        self.format = format
        self.compression = format == .qcow2 ? compression : .none
    }

    /// qemu-img convert's options for this compression.
    var qemuImgOptions: [String] {
        switch compression {
        case .none: return []
        case .zlib: return ["-c", "-o", "compression_type=zlib"]
        case .zstd: return ["-c", "-o", "compression_type=zstd"]
        }
    }

    /// `+256M`, `2G`, `512MiB`, `1073741824`: a byte count with an optional K, M, G or T
    /// (powers of 1024, with or without `iB`); a leading `+` means headroom.
    public static func parseSize(_ text: String) throws -> Size {
        let invalid = VMFactoryError(
            .invalidArgument, "'\(text)' is not a disk size",
            hint: "write +SIZE for free space on top of the content (+256M) or SIZE for the whole disk (2G); units K, M, G, T"
        )
        var rest = Substring(text.trimmingCharacters(in: .whitespaces))
        let headroom = rest.hasPrefix("+")
        if headroom { rest = rest.dropFirst() }
        let digits = rest.prefix(while: \.isNumber)
        guard !digits.isEmpty, let number = Int64(digits) else { throw invalid }
        var unit = rest.dropFirst(digits.count).uppercased()
        if unit.hasSuffix("IB") { unit.removeLast(2) } else if unit.hasSuffix("B") { unit.removeLast() }
        let shifts: [String: Int64] = ["": 0, "K": 10, "M": 20, "G": 30, "T": 40]
        guard let shift = shifts[unit], number <= (Int64.max >> shift) >> 1 else { throw invalid }
        let bytes = number << shift
        if headroom { return .headroom(bytes) }
        guard bytes >= 8 << 20 else {
            throw VMFactoryError(.invalidArgument, "a disk of \(text) is too small for ext4 with a journal", hint: "give at least 8M, or +SIZE for free space on top of the content")
        }
        return .absolute(bytes)
    }
}
