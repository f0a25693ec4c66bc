import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What stat(2) says of a file that identifies its bytes without reading them: which file it
/// is (device and inode), its size, and when its data (mtime) and its inode (ctime) last
/// changed, to the nanosecond.
///
/// ctime is what makes this worth trusting: a write moves it and nothing but the system clock
/// can set it back, so a file changed in place and then given its old mtime (`touch -d`,
/// `cp -p`, an editor that restores it) still differs. Anything that replaces the file (a
/// copy, a restore from a backup) gets another inode, and a file system that numbers its
/// devices anew at boot makes every file differ once; both only cost a fresh check.
public struct FileIdentity: Codable, Sendable, Equatable {
    public var device: UInt64
    public var inode: UInt64
    public var size: Int64
    /// Nanoseconds since the epoch.
    public var modified: Int64
    /// Nanoseconds since the epoch.
    public var changed: Int64

    public init(device: UInt64, inode: UInt64, size: Int64, modified: Int64, changed: Int64) {
        self.device = device
        self.inode = inode
        self.size = size
        self.modified = modified
        self.changed = changed
    }

    /// The identity of the file at `path` (following symlinks), or nil when it cannot be
    /// stat'ed.
    public static func of(_ path: String) -> FileIdentity? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return FileIdentity(st)
    }

    /// The identity of the file open on `fd`.
    public static func of(descriptor fd: Int32) -> FileIdentity? {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        return FileIdentity(st)
    }

    private init(_ st: stat) {
        self.init(
            device: UInt64(st.st_dev), inode: UInt64(st.st_ino), size: Int64(st.st_size),
            modified: Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec),
            changed: Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec)
        )
    }
}
