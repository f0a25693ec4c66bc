import CArchive
import Foundation
import VMFactoryCore

/// Reads an archive (any format and compression libarchive knows) from a byte stream.
///
/// The stream is pulled through a callback, so the input can be hashed as libarchive
/// consumes it, or be the data of an entry in another archive (a .deb's data.tar).
public final class ArchiveReader {
    let handle: OpaquePointer
    private let source: ByteSource
    public private(set) var currentPath: String = ""

    /// The archive formats a reader accepts.
    public enum Formats: Sendable {
        /// Whatever libarchive reads, `ar` included.
        case any
        /// tar in all its dialects (an image layer).
        case tar
        /// No archive: the decompressed stream as one entry.
        case raw
    }

    /// Where the archive's bytes come from.
    public final class ByteSource {
        let readChunk: (UnsafeMutableRawBufferPointer) throws -> Int
        var hashing = true
        var counted: Int64 = 0
        var hasher = StreamingHasher()
        var buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: FileStore.chunkSize, alignment: 16)
        var failure: (any Error)?

        init(readChunk: @escaping (UnsafeMutableRawBufferPointer) throws -> Int) {
            self.readChunk = readChunk
        }

        deinit { buffer.deallocate() }

        /// The sha256 of every byte libarchive has pulled so far (when hashing).
        public var digestSoFar: SHA256Digest { hasher.finalize() }
        public var byteCount: Int64 { counted }
    }

    /// Opens the file at `path`. The digest of the whole file is available as `source.digestSoFar`
    /// once the archive has been read to the end (`drainInput()`), unless `hashing` is off (for
    /// input already verified).
    public convenience init(path: String, formats: Formats = .any, hashing: Bool = true) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VMFactoryError.io("cannot open", path: path) }
        let source = ByteSource { buffer in
            while true {
                let count = read(fd, buffer.baseAddress, buffer.count)
                if count >= 0 { return count }
                if errno != EINTR { throw VMFactoryError.io("cannot read", path: path) }
            }
        }
        source.hashing = hashing
        try self.init(source: source, name: path, formats: formats, onClose: { close(fd) })
    }

    /// Reads the data of the current entry of `outer` as an archive of its own.
    public convenience init(entryOf outer: ArchiveReader) throws {
        let outerHandle = outer.handle
        let source = ByteSource { buffer in
            let count = archive_read_data(outerHandle, buffer.baseAddress, buffer.count)
            if count < 0 {
                let detail = archive_error_string(outerHandle).map { String(cString: $0) } ?? "read error"
                throw VMFactoryError(.archiveFailed, "cannot read \(outer.currentPath): \(detail)")
            }
            return count
        }
        try self.init(source: source, name: outer.currentPath, formats: .any, onClose: {})
    }

    private let onClose: () -> Void

    init(source: ByteSource, name: String, formats: Formats = .any, onClose: @escaping () -> Void) throws {
        guard let handle = archive_read_new() else { throw VMFactoryError(.archiveFailed, "archive_read_new failed") }
        self.handle = handle
        self.source = source
        self.onClose = onClose
        archive_read_support_filter_all(handle)
        switch formats {
        case .any:
            archive_read_support_format_all(handle)
            // `ar` (the .deb container) is not part of format_all's bidding in every build.
            archive_read_support_format_ar(handle)
        case .tar:
            archive_read_support_format_tar(handle)
            archive_read_support_format_gnutar(handle)
        case .raw:
            archive_read_support_format_raw(handle)
        }

        let context = Unmanaged.passUnretained(source).toOpaque()
        let status = archive_read_open(handle, context, nil, { _, context, bufferOut in
            guard let context, let bufferOut else { return -1 }
            let source = Unmanaged<ArchiveReader.ByteSource>.fromOpaque(context).takeUnretainedValue()
            do {
                let count = try source.readChunk(source.buffer)
                source.counted += Int64(count)
                if source.hashing { source.hasher.update(UnsafeRawBufferPointer(rebasing: source.buffer[0..<count])) }
                bufferOut.pointee = UnsafeRawPointer(source.buffer.baseAddress)
                return count
            } catch {
                source.failure = error
                return -1
            }
        }, nil)
        do {
            try archiveCheck(status, handle, "cannot open \(name) as an archive")
        } catch {
            archive_read_free(handle)
            onClose()
            throw source.failure ?? error
        }
    }

    deinit {
        archive_read_free(handle)
        onClose()
    }

    public var digestSoFar: SHA256Digest { source.digestSoFar }
    public var bytesRead: Int64 { source.byteCount }

    /// Advances to the next entry; nil at the end of the archive.
    public func nextEntry() throws -> OpaquePointer? {
        var entry: OpaquePointer?
        let status = archive_read_next_header(handle, &entry)
        if status == ARCHIVE_EOF { return nil }
        if let failure = source.failure { throw failure }
        try archiveCheck(status, handle, "cannot read the next entry after '\(currentPath)'")
        currentPath = entry.flatMap { archive_entry_pathname($0) }.map { String(cString: $0) } ?? ""
        return entry
    }

    /// Streams the current entry's data to `body`.
    public func readData(_ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: FileStore.chunkSize, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let count = archive_read_data(handle, buffer.baseAddress, buffer.count)
            if count == 0 { return }
            if count < 0 {
                if let failure = source.failure { throw failure }
                try archiveCheck(Int32(truncatingIfNeeded: count), handle, "cannot read \(currentPath)")
                return
            }
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
    }

    /// Reads whatever input libarchive has not pulled yet, so that `digestSoFar` covers the
    /// whole input (an archive's end-of-archive padding may be left unread otherwise).
    public func drainInput() throws {
        while true {
            let count = try source.readChunk(source.buffer)
            if count == 0 { return }
            source.hasher.update(UnsafeRawBufferPointer(rebasing: source.buffer[0..<count]))
        }
    }
}

/// One entry of an archive as listed by `ArchiveReader.list`.
public struct ArchiveListing: Sendable, Hashable {
    public var path: String
    /// The full `st_mode`: file type and permission bits.
    public var mode: UInt32
    public var uid: Int64
    public var gid: Int64
    public var mtime: Int64
    public var size: Int64
    public var deviceMajor: UInt32
    public var deviceMinor: UInt32
    public var symlink: String?
    /// sha256 of the entry's data (of nothing, for entries without data).
    public var sha256: SHA256Digest

    public var isDirectory: Bool { mode & 0o170000 == 0o040000 }
    public var isRegularFile: Bool { mode & 0o170000 == 0o100000 }
    public var isCharacterDevice: Bool { mode & 0o170000 == 0o020000 }
    public var permissions: UInt32 { mode & 0o7777 }
}

extension ArchiveReader {
    /// Every entry of the archive at `path`, in archive order, with a digest of its data.
    public static func list(_ path: String) throws -> [ArchiveListing] {
        let reader = try ArchiveReader(path: path)
        var result: [ArchiveListing] = []
        while let entry = try reader.nextEntry() {
            var hasher = StreamingHasher()
            try reader.readData { hasher.update($0) }
            result.append(ArchiveListing(
                path: reader.currentPath,
                mode: UInt32(archive_entry_mode(entry)),
                uid: archive_entry_uid(entry), gid: archive_entry_gid(entry),
                mtime: Int64(archive_entry_mtime(entry)), size: archive_entry_size(entry),
                deviceMajor: UInt32(archive_entry_rdevmajor(entry)), deviceMinor: UInt32(archive_entry_rdevminor(entry)),
                symlink: archive_entry_symlink(entry).map { String(cString: $0) },
                sha256: hasher.finalize()
            ))
        }
        return result
    }
}
