import Foundation
import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// Small, careful file-system operations: everything that appears under a final name gets
/// there by rename, so a reader never sees a half-written file.
public enum FileStore {
    public static let chunkSize = 1 << 20

    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    public static func isRegularFile(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    public static func fileSize(_ path: String) -> Int64? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return Int64(st.st_size)
    }

    public static func createDirectory(_ path: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw VMFactoryError(.io, "cannot create directory \(path)", hint: "check that the parent is writable", cause: error as NSError)
        }
    }

    /// A fresh, unique name beside `path`, in the same directory so a rename is atomic:
    /// `.NAME.PID-RANDOM.partial`. The one form of every temporary name vmfactory makes,
    /// so that `leftovers(of:)` can tell which ones a dead process left behind.
    public static func temporaryName(for path: String) -> String {
        let url = URL(fileURLWithPath: path)
        let suffix = "\(getpid())-\(UInt32.random(in: .min ... .max))"
        return url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).\(suffix).partial").path
    }

    /// Temporary names made for `path` (by `temporaryName(for:)`) whose process is gone:
    /// what a killed run left behind, safe to remove.
    public static func leftovers(of path: String) -> [String] {
        let url = URL(fileURLWithPath: path)
        let folder = url.deletingLastPathComponent().path
        let prefix = ".\(url.lastPathComponent)."
        return ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).sorted().compactMap { name in
            guard name.hasPrefix(prefix), name.hasSuffix(".partial") else { return nil }
            let middle = name.dropFirst(prefix.count).dropLast(".partial".count)
            guard let pid = middle.split(separator: "-").first.flatMap({ pid_t($0) }), !middle.contains(".") else { return nil }
            if pid == getpid() || kill(pid, 0) == 0 || errno == EPERM { return nil }
            return folder + "/" + name
        }
    }

    /// Removes what `leftovers(of:)` finds; returns the names removed.
    @discardableResult
    public static func removeLeftovers(of path: String) -> [String] {
        let found = leftovers(of: path)
        for leftover in found { try? removeTree(leftover) }
        return found
    }

    /// Writes `data` to `path` through a temporary file and rename.
    public static func writeAtomically(_ data: Data, to path: String, mode: mode_t = 0o644) throws {
        try createDirectory(URL(fileURLWithPath: path).deletingLastPathComponent().path)
        let temporary = temporaryName(for: path)
        guard FileManager.default.createFile(atPath: temporary, contents: data) else {
            throw VMFactoryError.io("cannot write", path: temporary)
        }
        chmod(temporary, mode)
        try rename(temporary, to: path)
    }

    /// Flushes a file's (or a folder's) data to the disk, so that a power loss after this
    /// returns cannot leave it empty under its name.
    public static func synchronize(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VMFactoryError.io("cannot open", path: path) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw VMFactoryError.io("cannot flush", path: path) }
    }

    /// `writeAtomically`, with the file flushed before the rename and its folder after: what
    /// a reader finds under the name after a crash is the old file or the whole new one.
    public static func writeDurably(_ data: Data, to path: String, mode: mode_t = 0o644) throws {
        let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
        try createDirectory(folder)
        let temporary = temporaryName(for: path)
        guard FileManager.default.createFile(atPath: temporary, contents: data) else {
            throw VMFactoryError.io("cannot write", path: temporary)
        }
        do {
            chmod(temporary, mode)
            try synchronize(temporary)
            try rename(temporary, to: path)
        } catch {
            unlink(temporary)
            throw error
        }
        try synchronize(folder)
    }

    public static func writeAtomically(_ text: String, to path: String, mode: mode_t = 0o644) throws {
        try writeAtomically(Data(text.utf8), to: path, mode: mode)
    }

    public static func rename(_ source: String, to destination: String) throws {
        if Glibc.rename(source, destination) != 0 {
            let code = errno
            unlink(source)
            throw VMFactoryError.io("cannot rename \(source) to", path: destination, errno: code)
        }
    }

    /// Copies a file through a temporary name; the copy appears complete or not at all.
    /// Streams in chunks (the kernel's own copy where it can), checking `cancellation`
    /// between them.
    /// `mode` replaces the source's permission bits.
    public static func copyAtomically(_ source: String, to destination: String, mode: mode_t? = nil, cancellation: BlockingWork.Cancellation? = nil) throws {
        try createDirectory(URL(fileURLWithPath: destination).deletingLastPathComponent().path)
        let temporary = temporaryName(for: destination)
        do {
            try copy(source, to: temporary, cancellation: cancellation)
            if let mode, chmod(temporary, mode) != 0 { throw VMFactoryError.io("cannot set the mode of", path: temporary) }
            try rename(temporary, to: destination)
        } catch {
            unlink(temporary)
            throw error
        }
    }

    /// Copies the bytes and the permission bits of `source` to a new file `destination`; the
    /// holes of a sparse file stay holes.
    public static func copy(_ source: String, to destination: String, cancellation: BlockingWork.Cancellation? = nil) throws {
        let input = open(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw VMFactoryError.io("cannot read", path: source) }
        defer { close(input) }
        var st = stat()
        guard fstat(input, &st) == 0 else { throw VMFactoryError.io("cannot read", path: source) }
        let output = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st.st_mode & 0o7777)
        guard output >= 0 else { throw VMFactoryError.io("cannot create", path: destination) }
        defer { close(output) }
        var offset: off_t = 0
        while offset < st.st_size {
            // The next stretch of data; a file system that cannot tell has one, the whole file.
            let start = lseek(input, offset, 3 /* SEEK_DATA */)
            if start < 0 && errno == ENXIO { break }
            let dataStart = start < 0 ? offset : start
            let end = start < 0 ? st.st_size : max(lseek(input, dataStart, 4 /* SEEK_HOLE */), dataStart)
            guard lseek(input, dataStart, SEEK_SET) >= 0, lseek(output, dataStart, SEEK_SET) >= 0 else {
                throw VMFactoryError.io("cannot seek in", path: destination)
            }
            try copyRange(input, to: output, length: Int(end - dataStart), destination: destination, cancellation: cancellation)
            offset = end
        }
        guard ftruncate(output, st.st_size) == 0 else { throw VMFactoryError.io("cannot size", path: destination) }
        fchmod(output, st.st_mode & 0o7777)
    }

    /// `length` bytes from the current offset of `input` to that of `output`.
    private static func copyRange(_ input: Int32, to output: Int32, length: Int, destination: String, cancellation: BlockingWork.Cancellation?) throws {
        var left = length
        while left > 0 {
            try cancellation?.check()
            let copied = vmf_copy_file_range(input, output, min(left, chunkSize * 8))
            if copied > 0 {
                left -= copied
                continue
            }
            if copied == 0 { return }
            if errno == EINTR { continue }
            // Not between these file systems: plain reads and writes.
            try copyByReading(input, to: output, length: left, destination: destination, cancellation: cancellation)
            return
        }
    }

    private static func copyByReading(_ input: Int32, to output: Int32, length: Int, destination: String, cancellation: BlockingWork.Cancellation?) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 16)
        defer { buffer.deallocate() }
        var left = length
        while left > 0 {
            try cancellation?.check()
            let count = read(input, buffer.baseAddress, min(chunkSize, left))
            if count < 0, errno == EINTR { continue }
            guard count >= 0 else { throw VMFactoryError.io("cannot read the source of", path: destination) }
            if count == 0 { return }
            try writeAll(output, UnsafeRawBufferPointer(rebasing: buffer[0..<count]), path: destination)
            left -= count
        }
    }

    /// Writes every byte, retrying short writes.
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
        var offset = 0
        while offset < bytes.count {
            let written = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                throw VMFactoryError.io("cannot write", path: path)
            }
            offset += written
        }
    }

    public static func readText(_ path: String) throws -> String {
        String(decoding: try readData(path), as: UTF8.self)
    }

    public static func readData(_ path: String) throws -> Data {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw VMFactoryError(exists(path) ? .io : .notFound, "cannot read \(path): \(String(cString: strerror(exists(path) ? EACCES : ENOENT)))")
        }
        return data
    }

    /// Calls `body` with successive chunks of the file, checking `cancellation` between them.
    public static func forEachChunk(ofFile path: String, cancellation: BlockingWork.Cancellation? = nil, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VMFactoryError.io("cannot open", path: path) }
        defer { close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            try cancellation?.check()
            let count = read(fd, buffer.baseAddress, chunkSize)
            if count < 0 {
                if errno == EINTR { continue }
                throw VMFactoryError.io("cannot read", path: path)
            }
            if count == 0 { return }
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
    }

    /// Removes a file or a whole tree, including trees that were made read-only.
    public static func removeTree(_ path: String) throws {
        guard exists(path) else { return }
        makeWritable(path)
        do {
            try FileManager.default.removeItem(atPath: path)
        } catch {
            throw VMFactoryError(.io, "cannot remove \(path)", cause: error as NSError)
        }
    }

    /// Drops every write bit below `path` (symlinks are left alone).
    public static func makeReadOnly(_ path: String) {
        walk(path) { entry, mode in mode & ~0o222 }
    }

    static func makeWritable(_ path: String) {
        walk(path) { entry, mode in mode | 0o200 }
    }

    /// Applies `change` to the mode of every directory and regular file below `root`,
    /// directories after their contents so that a read-only directory can still be walked.
    private static func walk(_ root: String, change: (String, mode_t) -> mode_t) {
        var st = stat()
        guard lstat(root, &st) == 0 else { return }
        let type = st.st_mode & S_IFMT
        if type == S_IFDIR {
            // Make the directory traversable and writable first when we need to enter it.
            chmod(root, (st.st_mode & 0o7777) | 0o700)
            if let names = try? FileManager.default.contentsOfDirectory(atPath: root) {
                for name in names { walk(root + "/" + name, change: change) }
            }
            chmod(root, change(root, st.st_mode & 0o7777))
        } else if type == S_IFREG {
            chmod(root, change(root, st.st_mode & 0o7777))
        }
    }

    /// Bytes used by the regular files below `path`.
    public static func diskUsage(_ path: String) -> Int64 {
        var st = stat()
        guard lstat(path, &st) == 0 else { return 0 }
        if (st.st_mode & S_IFMT) == S_IFREG { return Int64(st.st_size) }
        guard (st.st_mode & S_IFMT) == S_IFDIR, let enumerator = FileManager.default.enumerator(atPath: path) else { return 0 }
        var total: Int64 = 0
        while let entry = enumerator.nextObject() as? String {
            if lstat(path + "/" + entry, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG { total += Int64(st.st_size) }
        }
        return total
    }

    /// Relative form of `path` when it lies under the current directory, for messages.
    public static func displayPath(_ path: String) -> String {
        let cwd = FileManager.default.currentDirectoryPath
        if path.hasPrefix(cwd + "/") { return String(path.dropFirst(cwd.count + 1)) }
        return path
    }

    /// `path` with every symlink resolved (realpath(3)); nil when it does not exist.
    public static func realPath(_ path: String) -> String? {
        guard let resolved = Glibc.realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    public static func absolute(_ path: String, relativeTo base: String) -> String {
        let expanded = (path as NSString).expandingTildeInPath
        if expanded.hasPrefix("/") { return URL(fileURLWithPath: expanded).standardizedFileURL.path }
        return URL(fileURLWithPath: base).appendingPathComponent(expanded).standardizedFileURL.path
    }
}
