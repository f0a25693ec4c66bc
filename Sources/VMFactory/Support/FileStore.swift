import Foundation
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

    /// A fresh, unique name beside `path`, in the same directory so a rename is atomic.
    public static func temporaryName(for path: String) -> String {
        let url = URL(fileURLWithPath: path)
        let suffix = "\(getpid())-\(UInt32.random(in: .min ... .max))"
        return url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).\(suffix).partial").path
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
    public static func copyAtomically(_ source: String, to destination: String) throws {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: source))
        } catch {
            throw VMFactoryError(.io, "cannot read \(source)", cause: error as NSError)
        }
        try writeAtomically(data, to: destination)
    }

    public static func readText(_ path: String) throws -> String {
        do {
            return try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw VMFactoryError(.notFound, "cannot read \(path)", cause: error as NSError)
        }
    }

    /// Calls `body` with successive chunks of the file.
    public static func forEachChunk(ofFile path: String, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VMFactoryError.io("cannot open", path: path) }
        defer { close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 16)
        defer { buffer.deallocate() }
        while true {
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

    public static func absolute(_ path: String, relativeTo base: String) -> String {
        let expanded = (path as NSString).expandingTildeInPath
        if expanded.hasPrefix("/") { return URL(fileURLWithPath: expanded).standardizedFileURL.path }
        return URL(fileURLWithPath: base).appendingPathComponent(expanded).standardizedFileURL.path
    }
}

/// An advisory lock on a file (flock), held until released or the process ends.
public final class FileLock: @unchecked Sendable {
    private let fd: Int32
    public let path: String

    private init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    /// Takes the lock, calling `onWait` once if another process holds it.
    public static func acquire(_ path: String, onWait: (() -> Void)? = nil) async throws -> FileLock {
        try FileStore.createDirectory(URL(fileURLWithPath: path).deletingLastPathComponent().path)
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw VMFactoryError.io("cannot open lock file", path: path) }
        if flock(fd, LOCK_EX | LOCK_NB) == 0 { return FileLock(fd: fd, path: path) }
        guard errno == EWOULDBLOCK else {
            close(fd)
            throw VMFactoryError.io("cannot lock", path: path)
        }
        onWait?()
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            do {
                try await Task.sleep(for: .milliseconds(200))
            } catch {
                close(fd)
                throw VMFactoryError(.interrupted, "interrupted while waiting for \(path)")
            }
        }
        return FileLock(fd: fd, path: path)
    }

    /// Takes the lock only if nobody holds it.
    public static func tryAcquire(_ path: String) -> FileLock? {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            return nil
        }
        return FileLock(fd: fd, path: path)
    }

    public func release() {
        flock(fd, LOCK_UN)
    }

    deinit {
        close(fd)
    }
}
