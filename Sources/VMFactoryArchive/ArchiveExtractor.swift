import CArchive
import Foundation
import VMFactoryCore

/// Extracts archives onto disk without letting any entry reach outside the destination.
///
/// Two layers guard the destination. First, every entry is checked here: no absolute path,
/// no `..`, hard links and symlink targets must stay inside, no device nodes. Then each entry
/// is rewritten to its absolute place below the destination and libarchive writes it with
/// `SECURE_NODOTDOT | SECURE_SYMLINKS`, which also refuses to write through a symlink that an
/// earlier entry created.
public enum ArchiveExtractor {
    public struct Summary: Sendable {
        public var entries: Int
        /// sha256 of the archive file, computed from the bytes libarchive read.
        public var digest: SHA256Digest
    }

    /// - Parameters:
    ///   - stripTopDirectory: every entry must lie in one top folder, which is dropped.
    ///   - owners: the entries' owners too (root only), not only their modes and times.
    ///   - expected: the digest the archive must have; checked after the last byte was read.
    ///   - cancellation: checked between entries.
    public static func extract(
        archive path: String,
        into destination: String,
        stripTopDirectory: Bool,
        owners: Bool = false,
        expected: SHA256Digest? = nil,
        cancellation: BlockingWork.Cancellation? = nil,
        progress: ((_ bytesRead: Int64, _ entries: Int) -> Void)? = nil
    ) throws -> Summary {
        let reader = try ArchiveReader(path: path)
        try FileStore.createDirectory(destination)
        // Entries are written at absolute paths below the destination's real path (so that
        // no symlink above it trips SECURE_SYMLINKS), never relative to the working
        // directory, which is the whole process's.
        guard let root = FileStore.realPath(destination) else { throw VMFactoryError.io("cannot resolve", path: destination) }
        guard let writer = archive_write_disk_new() else { throw VMFactoryError(.archiveFailed, "archive_write_disk_new failed") }
        defer { archive_write_free(writer) }
        // Absolute paths in the archive itself are refused by `checkedPath` before this point.
        let flags = ARCHIVE_EXTRACT_SECURE_NODOTDOT | ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME | (owners ? ARCHIVE_EXTRACT_OWNER : 0)
        archive_write_disk_set_options(writer, flags)

        var entries = 0
        var top: String? = nil
        let name = FileStore.displayPath(path)
        while let entry = try reader.nextEntry() {
            try cancellation?.check(at: "entry \(entries + 1)")
            guard let relative = try checkedPath(of: entry, archive: name, strip: stripTopDirectory, top: &top) else { continue }
            archive_entry_set_pathname(entry, root + "/" + relative)
            if let link = archive_entry_hardlink(entry).map({ String(cString: $0) }) {
                archive_entry_set_hardlink(entry, root + "/" + link)
            }
            try archiveCheck(archive_write_header(writer, entry), writer, "\(name): refused entry '\(reader.currentPath)'")
            if archive_entry_size(entry) > 0 {
                try reader.readData { chunk in
                    let written = archive_write_data(writer, chunk.baseAddress, chunk.count)
                    if written < 0 {
                        try archiveCheck(Int32(truncatingIfNeeded: written), writer, "\(name): cannot write '\(relative)'")
                    }
                }
            }
            try archiveCheck(archive_write_finish_entry(writer), writer, "\(name): cannot finish '\(relative)'")
            entries += 1
            if entries % 512 == 0 { progress?(reader.bytesRead, entries) }
        }
        // Directory modes and times are applied at close.
        try archiveCheck(archive_write_close(writer), writer, "\(name): cannot finish extraction")
        try reader.drainInput()
        progress?(reader.bytesRead, entries)
        let digest = reader.digestSoFar
        if let expected, digest != expected {
            throw VMFactoryError(
                .digestMismatch, "\(name) changed: expected sha256 \(expected), read \(digest)",
                hint: "the file was modified after it was verified; remove it and fetch again"
            )
        }
        return Summary(entries: entries, digest: digest)
    }

    /// The path an entry may be written to, relative to the destination; nil to skip it
    /// (the top folder itself). Throws for anything that could reach outside.
    static func checkedPath(of entry: OpaquePointer, archive: String, strip: Bool, top: inout String?) throws -> String? {
        let original = archive_entry_pathname(entry).map { String(cString: $0) } ?? ""
        func hostile(_ reason: String) -> VMFactoryError {
            VMFactoryError(
                .hostileArchive, "\(archive): refused entry '\(original)': \(reason)",
                hint: "the archive is not a plain source tree; check where it came from"
            )
        }
        guard let components = normalizedComponents(original, resolvingDotDot: false) else {
            throw hostile(original.hasPrefix("/") ? "absolute path" : "path leaves the destination (..)")
        }
        var inside = components
        if strip {
            guard let first = inside.first else { return nil }
            if top == nil { top = first }
            guard first == top else { throw hostile("not inside the archive's top folder '\(top ?? "")'") }
            inside.removeFirst()
            if inside.isEmpty { return nil }
        }
        if inside.isEmpty { return nil }
        let relative = inside.joined(separator: "/")

        if let link = archive_entry_hardlink(entry).map({ String(cString: $0) }) {
            guard var target = normalizedComponents(link, resolvingDotDot: false) else { throw hostile("hard link to '\(link)' outside the destination") }
            if strip {
                guard target.first == top else { throw hostile("hard link to '\(link)' outside the archive's top folder") }
                target.removeFirst()
            }
            guard !target.isEmpty else { throw hostile("hard link to a folder") }
            archive_entry_set_hardlink(entry, target.joined(separator: "/"))
            // A hard link entry may carry no file type of its own.
            return relative
        }

        let type = archive_entry_filetype(entry)
        switch EntryType(rawValue: UInt32(type)) {
        case .regular, .directory, .symlink:
            break
        default:
            throw hostile("device nodes, fifos and sockets have no place in a source tree")
        }

        if EntryType(rawValue: UInt32(type)) == .symlink {
            let target = archive_entry_symlink(entry).map { String(cString: $0) } ?? ""
            let parent = inside.dropLast().joined(separator: "/")
            if target.hasPrefix("/") || normalizedComponents(parent.isEmpty ? target : parent + "/" + target) == nil {
                throw hostile("symlink to '\(target)' points outside the destination")
            }
            // ".." only before any name: after a name that an earlier entry made a symlink
            // ("s -> .", then "d -> s/.."), the kernel climbs from where that link leads, not
            // where the text says. Leading ".." climb real folders (nothing is written through a
            // link), so the check above holds for them.
            var named = false
            for part in target.split(separator: "/") where part != "." {
                if part == ".." && named { throw hostile("symlink to '\(target)': '..' after a name may climb out through another link") }
                named = named || part != ".."
            }
        }
        return relative
    }

    /// Path components with `.` and empty parts dropped; nil when the path is absolute, or
    /// has a `..` (when `resolvingDotDot` is false) or climbs above its start (when true).
    package static func normalizedComponents(_ path: String, resolvingDotDot: Bool = true) -> [String]? {
        if path.hasPrefix("/") { return nil }
        var result: [String] = []
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            switch part {
            case ".": continue
            case "..":
                guard resolvingDotDot, !result.isEmpty else { return nil }
                result.removeLast()
            default: result.append(String(part))
            }
        }
        return result
    }
}
