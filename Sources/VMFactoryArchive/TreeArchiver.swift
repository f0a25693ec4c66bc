import CArchive
import Foundation
import VMFactoryCore

/// A folder or file on disk as a tar stream (pax where ustar cannot hold a name or size), with
/// owners, modes, times, symlinks as links and hard links as links: what `vmfactory cp` sends
/// into a VM.
public enum TreeArchiver {
    /// Writes `path` and everything below it to `fd`. Entries are named `top` and below it
    /// (an empty `top` names the contents alone, for `PATH/.`); symlinks are never followed.
    public static func write(_ path: String, top: String, to fd: Int32) throws {
        guard let writer = archive_write_new() else { throw VMFactoryError(.archiveFailed, "archive_write_new failed") }
        defer { archive_write_free(writer) }
        try archiveCheck(archive_write_set_format_pax_restricted(writer), writer, "tar format")
        try archiveCheck(archive_write_open_fd(writer, fd), writer, "writing the tar stream")
        guard let disk = archive_read_disk_new() else { throw VMFactoryError(.archiveFailed, "archive_read_disk_new failed") }
        defer { archive_read_free(disk) }
        archive_read_disk_set_symlink_physical(disk)
        archive_read_disk_set_standard_lookup(disk)
        try archiveCheck(archive_read_disk_open(disk, path), disk, "cannot read \(path)")
        guard let resolver = archive_entry_linkresolver_new() else { throw VMFactoryError(.archiveFailed, "archive_entry_linkresolver_new failed") }
        defer { archive_entry_linkresolver_free(resolver) }
        archive_entry_linkresolver_set_strategy(resolver, archive_format(writer))
        let root = path.hasSuffix("/") && path.count > 1 ? String(path.dropLast()) : path
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            guard let entry = archive_entry_new() else { throw VMFactoryError(.archiveFailed, "archive_entry_new failed") }
            defer { archive_entry_free(entry) }
            let status = archive_read_next_header2(disk, entry)
            if status == ARCHIVE_EOF { break }
            try archiveCheck(status, disk, "cannot read below \(path)")
            let name = archive_entry_pathname(entry).map { String(cString: $0) } ?? ""
            let below = name == root ? "" : String(name.dropFirst(root.count + 1))
            let renamed = [top, below].filter { !$0.isEmpty }.joined(separator: "/")
            if archive_entry_filetype(entry) == EntryType.directory.rawValue { archive_read_disk_descend(disk) }
            // The top folder itself has no name when only its contents are copied.
            if renamed.isEmpty { continue }
            archive_entry_set_pathname(entry, renamed)
            var linked: OpaquePointer? = entry
            var sparse: OpaquePointer?
            archive_entry_linkify(resolver, &linked, &sparse)
            guard let out = linked else { continue }
            try archiveCheck(archive_write_header(writer, out), writer, "cannot write the entry \(renamed)")
            if archive_entry_size(out) > 0, archive_entry_hardlink(out) == nil {
                while true {
                    let count = archive_read_data(disk, buffer, 1 << 16)
                    if count == 0 { break }
                    if count < 0 { try archiveCheck(Int32(truncatingIfNeeded: count), disk, "cannot read \(renamed)") }
                    if archive_write_data(writer, buffer, count) < 0 { try archiveCheck(ARCHIVE_FATAL, writer, "cannot write \(renamed)") }
                }
            }
        }
        try archiveCheck(archive_write_close(writer), writer, "finishing the tar stream")
    }
}
