import CArchive
import CLZ4
import Foundation
import VMFactoryCore

/// Writes tar or newc cpio archives with exactly the metadata given: no owner, time or
/// order is taken from the machine, so the same entries give the same bytes.
public final class ArchiveWriter {
    public enum Format: Sendable {
        case paxTar
        case cpioNewc
    }

    public enum Compression: String, Sendable, CaseIterable {
        case none, gzip, zstd, lz4
    }

    public enum Kind: Sendable, Hashable {
        case file(Data)
        case directory
        case symlink(String)
        case hardlink(String)
        case characterDevice(major: UInt32, minor: UInt32)
    }

    public struct Entry: Sendable, Hashable {
        public var path: String
        public var kind: Kind
        public var mode: UInt32
        public var uid: Int64
        public var gid: Int64
        public var mtime: Int64

        public init(path: String, kind: Kind, mode: UInt32 = 0o644, uid: Int64 = 0, gid: Int64 = 0, mtime: Int64 = 0) {
            self.path = path
            self.kind = kind
            self.mode = mode
            self.uid = uid
            self.gid = gid
            self.mtime = mtime
        }
    }

    /// Writes `entries`, in the order given, to `path` through a temporary name.
    public static func write(_ entries: [Entry], to path: String, format: Format, compression: Compression = .none) throws {
        try FileStore.createDirectory(URL(fileURLWithPath: path).deletingLastPathComponent().path)
        let temporary = FileStore.temporaryName(for: path)
        let plain = FileStore.temporaryName(for: path + ".plain")
        defer { unlink(plain) }
        do {
            if compression == .lz4 {
                try writeEntries(entries, to: plain, format: format, compression: .none)
                try LZ4Legacy.compress(plain, to: temporary)
            } else {
                try writeEntries(entries, to: temporary, format: format, compression: compression)
            }
            try FileStore.rename(temporary, to: path)
        } catch {
            unlink(temporary)
            throw error
        }
    }

    private static func writeEntries(_ entries: [Entry], to path: String, format: Format, compression: Compression) throws {
        guard let handle = archive_write_new() else { throw VMFactoryError(.archiveFailed, "archive_write_new failed") }
        defer { archive_write_free(handle) }
        try configure(handle, format: format, compression: compression)
        try archiveCheck(archive_write_open_filename(handle, path), handle, "cannot create \(path)")
        // cpio identifies hard links by inode; number entries so that none collide.
        for (index, item) in entries.enumerated() {
            try write(item, inode: Int64(index + 1), to: handle)
        }
        try archiveCheck(archive_write_close(handle), handle, "cannot finish \(path)")
    }

    private static func configure(_ handle: OpaquePointer, format: Format, compression: Compression) throws {
        switch format {
        case .paxTar: try archiveCheck(archive_write_set_format_pax_restricted(handle), handle, "tar format")
        case .cpioNewc: try archiveCheck(archive_write_set_format_cpio_newc(handle), handle, "cpio format")
        }
        switch compression {
        case .none: break
        case .gzip:
            try archiveCheck(archive_write_add_filter_gzip(handle), handle, "gzip")
            // gzip headers carry a time stamp and a file name unless told not to.
            archive_write_set_filter_option(handle, "gzip", "timestamp", nil)
        case .zstd: try archiveCheck(archive_write_add_filter_zstd(handle), handle, "zstd")
        case .lz4:
            // Written by LZ4Legacy from the uncompressed archive.
            break
        }
        if format == .cpioNewc || compression == .none {
            // cpio and bare archives need no block padding beyond the format's own.
            archive_write_set_bytes_in_last_block(handle, 1)
        }
    }

    private static func write(_ item: Entry, inode: Int64, to handle: OpaquePointer) throws {
        guard let entry = archive_entry_new() else { throw VMFactoryError(.archiveFailed, "archive_entry_new failed") }
        defer { archive_entry_free(entry) }
        archive_entry_set_pathname(entry, item.path)
        archive_entry_set_uid(entry, item.uid)
        archive_entry_set_gid(entry, item.gid)
        archive_entry_set_mtime(entry, time_t(item.mtime), 0)
        archive_entry_set_nlink(entry, item.kind == .directory ? 2 : 1)
        archive_entry_set_ino64(entry, inode)
        // cpio records a size for every entry; only regular files have data.
        archive_entry_set_size(entry, 0)
        var payload: Data? = nil
        switch item.kind {
        case .file(let data):
            archive_entry_set_filetype(entry, EntryType.regular.rawValue)
            archive_entry_set_size(entry, Int64(data.count))
            payload = data
        case .directory:
            archive_entry_set_filetype(entry, EntryType.directory.rawValue)
        case .symlink(let target):
            archive_entry_set_filetype(entry, EntryType.symlink.rawValue)
            archive_entry_set_symlink(entry, target)
        case .hardlink(let target):
            archive_entry_set_filetype(entry, EntryType.regular.rawValue)
            archive_entry_set_hardlink(entry, target)
        case .characterDevice(let major, let minor):
            archive_entry_set_filetype(entry, EntryType.characterDevice.rawValue)
            archive_entry_set_rdevmajor(entry, UInt(major))
            archive_entry_set_rdevminor(entry, UInt(minor))
        }
        archive_entry_set_perm(entry, item.mode & 0o7777)
        try archiveCheck(archive_write_header(handle, entry), handle, "cannot add \(item.path)")
        if let payload, !payload.isEmpty {
            let written = payload.withUnsafeBytes { archive_write_data(handle, $0.baseAddress, $0.count) }
            if written < 0 { try archiveCheck(Int32(truncatingIfNeeded: written), handle, "cannot write \(item.path)") }
        }
    }
}

/// The legacy lz4 format (`lz4 -l`), the only lz4 format the kernel unpacks in an initramfs:
/// a magic number, then blocks of at most 8 MiB of input, each a little-endian length and an
/// LZ4 block. libarchive writes only the newer frame format.
enum LZ4Legacy {
    static let magic: UInt32 = 0x184C_2102
    static let blockSize = 8 << 20

    static func compress(_ input: String, to output: String) throws {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: input))
        } catch {
            throw VMFactoryError(.io, "cannot read \(input)", cause: error as NSError)
        }
        var result = Data()
        func append(_ value: UInt32) {
            withUnsafeBytes(of: value.littleEndian) { result.append(contentsOf: $0) }
        }
        append(magic)
        let bound = Int(LZ4_compressBound(Int32(blockSize)))
        var block = [UInt8](repeating: 0, count: bound)
        var offset = 0
        while offset < data.count {
            let count = min(blockSize, data.count - offset)
            let written = data.withUnsafeBytes { raw -> Int32 in
                let source = raw.baseAddress!.advanced(by: offset).assumingMemoryBound(to: CChar.self)
                return block.withUnsafeMutableBytes {
                    LZ4_compress_HC(source, $0.baseAddress!.assumingMemoryBound(to: CChar.self), Int32(count), Int32(bound), LZ4HC_CLEVEL_MAX)
                }
            }
            guard written > 0 else { throw VMFactoryError(.archiveFailed, "lz4 could not compress \(input)") }
            append(UInt32(written))
            result.append(contentsOf: block[0..<Int(written)])
            offset += count
        }
        guard FileManager.default.createFile(atPath: output, contents: result) else {
            throw VMFactoryError.io("cannot write", path: output)
        }
    }
}
