import CArchive
import Foundation

/// Writes tar or newc cpio archives with exactly the metadata given: no owner, time or
/// order is taken from the machine, so the same entries give the same bytes.
public final class ArchiveWriter {
    public enum Format: Sendable {
        case paxTar
        case cpioNewc
        /// An `ar` archive, the container of a .deb.
        case arSVR4
    }

    public enum Compression: String, Sendable, CaseIterable {
        case none, gzip, xz, zstd, lz4
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
        do {
            try writeEntries(entries, to: temporary, format: format, compression: compression)
            try FileStore.rename(temporary, to: path)
        } catch {
            unlink(temporary)
            throw error
        }
    }

    private static func writeEntries(_ entries: [Entry], to path: String, format: Format, compression: Compression) throws {
        guard let handle = archive_write_new() else { throw VMFactoryError(.archiveFailed, "archive_write_new failed") }
        defer { archive_write_free(handle) }
        switch format {
        case .paxTar: try archiveCheck(archive_write_set_format_pax_restricted(handle), handle, "tar format")
        case .cpioNewc: try archiveCheck(archive_write_set_format_cpio_newc(handle), handle, "cpio format")
        case .arSVR4: try archiveCheck(archive_write_set_format_ar_svr4(handle), handle, "ar format")
        }
        switch compression {
        case .none: break
        case .gzip:
            try archiveCheck(archive_write_add_filter_gzip(handle), handle, "gzip")
            // gzip headers carry a time stamp and a file name unless told not to.
            archive_write_set_filter_option(handle, "gzip", "timestamp", nil)
        case .xz: try archiveCheck(archive_write_add_filter_xz(handle), handle, "xz")
        case .zstd: try archiveCheck(archive_write_add_filter_zstd(handle), handle, "zstd")
        case .lz4:
            try archiveCheck(archive_write_add_filter_lz4(handle), handle, "lz4")
            // The kernel only unpacks the legacy lz4 frame format in an initramfs.
            try archiveCheck(archive_write_set_filter_option(handle, "lz4", "lz4-legacy", "1"), handle, "lz4 legacy format")
        }
        if format == .cpioNewc || compression == .none {
            // cpio and bare archives need no block padding beyond the format's own.
            archive_write_set_bytes_in_last_block(handle, 1)
        }
        try archiveCheck(archive_write_open_filename(handle, path), handle, "cannot create \(path)")

        var inode: Int64 = 1
        for item in entries {
            guard let entry = archive_entry_new() else { throw VMFactoryError(.archiveFailed, "archive_entry_new failed") }
            defer { archive_entry_free(entry) }
            archive_entry_set_pathname(entry, item.path)
            archive_entry_set_uid(entry, item.uid)
            archive_entry_set_gid(entry, item.gid)
            archive_entry_set_mtime(entry, time_t(item.mtime), 0)
            archive_entry_set_nlink(entry, item.kind == .directory ? 2 : 1)
            // cpio identifies hard links by inode; number entries so that none collide.
            archive_entry_set_ino64(entry, inode)
            inode += 1
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
        try archiveCheck(archive_write_close(handle), handle, "cannot finish \(path)")
    }
}
