import Foundation

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
