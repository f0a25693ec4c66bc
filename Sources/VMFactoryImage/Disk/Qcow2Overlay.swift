import Foundation
import VMFactoryCore

/// An empty qcow2 file over a backing qcow2 file: every read goes to the backing file until
/// the guest writes, and writes stay in the overlay. The bytes are those of `qemu-img create
/// -f qcow2 -F qcow2 -b BACKING OVERLAY` (QEMU 7.2): version 3, 64 KiB clusters, 16-bit
/// refcounts, the header in cluster 0, the refcount table in cluster 1, its one block in
/// cluster 2 and the L1 table in cluster 3.
///
/// A run makes one per start, so it is written here rather than by a child process, which
/// costs tens of milliseconds under load.
public enum Qcow2Overlay {
    static let magic: UInt32 = 0x5146_49fb
    static let clusterBits: UInt32 = 16
    static let clusterSize = 1 << 16
    static let headerLength = 112
    static let backingFormatExtension: UInt32 = 0xe279_2aca
    static let featureNameExtension: UInt32 = 0x6803_f857
    /// The feature name table QEMU writes: (type, bit, name); type 0 incompatible, 1
    /// compatible, 2 autoclear.
    static let featureNames: [(UInt8, UInt8, String)] = [
        (0, 0, "dirty bit"), (0, 1, "corrupt bit"), (0, 2, "external data file"), (0, 3, "compression type"),
        (0, 4, "extended L2 entries"), (1, 0, "lazy refcounts"), (2, 0, "bitmaps"), (2, 1, "raw external data"),
    ]

    /// The virtual size a qcow2 file's header gives.
    public static func virtualSize(of path: String) throws -> UInt64 {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw VMFactoryError(.io, "cannot open the disk \(FileStore.displayPath(path)): \(String(cString: strerror(errno)))", hint: "convert the image again with vmfactory rootfs")
        }
        defer { close(fd) }
        var header = [UInt8](repeating: 0, count: 32)
        let count = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 32, 0) }
        guard count == 32, read32(header, 0) == magic, [2, 3].contains(read32(header, 4)) else {
            throw VMFactoryError(.io, "\(FileStore.displayPath(path)) is not a qcow2 disk", hint: "remove it and convert the image again with vmfactory rootfs")
        }
        return read64(header, 24)
    }

    /// Writes the overlay of `backing` to `path` (through a temporary name), of the backing
    /// file's virtual size. The backing file is named as given, as qemu-img records it.
    /// Returns the virtual size.
    @discardableResult
    public static func create(backing: String, at path: String) throws -> UInt64 {
        let size = try virtualSize(of: backing)
        let bytes = try Self.bytes(backing: backing, virtualSize: size)
        try FileStore.writeAtomically(Data(bytes), to: path)
        return size
    }

    /// The overlay's bytes for a backing file of `virtualSize` bytes.
    static func bytes(backing: String, virtualSize: UInt64) throws -> [UInt8] {
        let name = Array(backing.utf8)
        // One L1 entry maps an L2 table of 8192 clusters: 512 MiB.
        let perL1Entry = UInt64(clusterSize) * UInt64(clusterSize / 8)
        let l1Size = Int((virtualSize + perL1Entry - 1) / perL1Entry)
        guard virtualSize > 0, l1Size * 8 <= clusterSize else {
            throw VMFactoryError(.invalidArgument, "the disk's virtual size \(virtualSize) is outside what a run's overlay holds (up to 4 TiB)", hint: "convert the image with a smaller --size")
        }
        var header = [UInt8]()
        func put32(_ value: UInt32) { header += withUnsafeBytes(of: value.bigEndian, Array.init) }
        func put64(_ value: UInt64) { header += withUnsafeBytes(of: value.bigEndian, Array.init) }
        func pad(to alignment: Int) { header += [UInt8](repeating: 0, count: (alignment - header.count % alignment) % alignment) }

        let featureTable = featureNames.count * 48
        let extensions = 8 + 8 + 8 + featureTable + 8
        let backingOffset = headerLength + extensions
        guard !name.isEmpty, name.count <= 1023, backingOffset + name.count <= clusterSize else {
            throw VMFactoryError(.invalidArgument, "the disk's path is too long for a qcow2 backing file name (at most 1023 bytes)", hint: "use a shorter --cache-dir")
        }
        put32(magic)
        put32(3)
        put64(UInt64(backingOffset))
        put32(UInt32(name.count))
        put32(clusterBits)
        put64(virtualSize)
        put32(0)  // no encryption
        put32(UInt32(l1Size))
        put64(UInt64(3 * clusterSize))  // the L1 table
        put64(UInt64(clusterSize))  // the refcount table
        put32(1)  // of one cluster
        put32(0)  // no snapshots
        put64(0)
        put64(0)  // incompatible features
        put64(0)  // compatible features
        put64(0)  // autoclear features
        put32(4)  // refcount order: 16 bits
        put32(UInt32(headerLength))
        pad(to: headerLength)  // compression type zlib, and padding

        put32(backingFormatExtension)
        put32(5)
        header += Array("qcow2".utf8)
        pad(to: 8)
        put32(featureNameExtension)
        put32(UInt32(featureTable))
        for (type, bit, featureName) in featureNames {
            header += [type, bit] + Array(featureName.utf8)
            header += [UInt8](repeating: 0, count: 46 - featureName.utf8.count)
        }
        put64(0)  // the end of the extensions
        precondition(header.count == backingOffset)
        header += name

        var file = [UInt8](repeating: 0, count: 3 * clusterSize + l1Size * 8)
        file.replaceSubrange(0..<header.count, with: header)
        // The refcount table's one entry: the block in cluster 2, which counts clusters 0-3 once.
        file.replaceSubrange(clusterSize..<clusterSize + 8, with: withUnsafeBytes(of: UInt64(2 * clusterSize).bigEndian, Array.init))
        for cluster in 0..<4 { file[2 * clusterSize + 2 * cluster + 1] = 1 }
        return file
    }

    static func read32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        bytes[offset..<offset + 4].reduce(0) { $0 << 8 | UInt32($1) }
    }

    static func read64(_ bytes: [UInt8], _ offset: Int) -> UInt64 {
        bytes[offset..<offset + 8].reduce(0) { $0 << 8 | UInt64($1) }
    }
}
