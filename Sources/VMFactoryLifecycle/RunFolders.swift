import Foundation
import VMFactoryCore

/// `<cache>/runs/<id>/`: one folder per run, holding its record, its overlay, its sockets,
/// QEMU's command, the console log and a detached run's output. A run's supervisor holds its
/// folder's lock while it lives; a folder whose lock is free and that neither --keep nor
/// `run -d` kept was left by a run that was killed, and the next run removes it.
public struct RunFolders: Sendable {
    public var root: String

    public init(cacheDirectory: String) {
        root = cacheDirectory + "/runs"
    }

    public struct Folder: Sendable {
        public var id: String
        public var path: String
        /// The sockets' folder: inside the run's folder, or under /tmp when that path would
        /// be too long for a socket address.
        public var sockets: String
        let lock: FileLock

        public func markKept() throws {
            try FileStore.writeAtomically("kept by vmfactory run --keep\n", to: path + "/" + RunFolders.keptMarker)
        }

        /// A detached run's folder stays after its end, for `ps -a`, `logs` and `wait`, until `rm`.
        public func markDetached() throws {
            try FileStore.writeAtomically("a detached run's: removed by vmfactory rm\n", to: path + "/" + RunFolders.detachedMarker)
        }

        /// Removes the folder (the lock goes last).
        public func remove() {
            if !sockets.hasPrefix(path) { try? FileStore.removeTree(sockets) }
            try? FileStore.removeTree(path)
            lock.release()
        }
    }

    static let keptMarker = "kept"
    static let detachedMarker = "detached"
    static let lockName = ".lock"

    /// A new run's id: 12 hexadecimal digits, also the guest's default host name.
    public static func newID() -> String {
        (0..<6).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }

    /// The folder of the run `id`, after removing what killed runs left.
    public func create(id: String) async throws -> Folder {
        try FileStore.createDirectory(root)
        removeLeftovers()
        // Made and locked under a hidden name, then renamed: another run's sweep never sees
        // it unlocked.
        let path = root + "/" + id
        let making = root + "/." + id
        try FileStore.createDirectory(making)
        // The run's files (its overlay, its logs) are its own.
        chmod(making, 0o700)
        let lock = try await FileLock.acquire(making + "/" + Self.lockName)
        try FileStore.rename(making, to: path)
        var sockets = path + "/sockets"
        // A UNIX socket's path is at most 107 bytes.
        if (sockets + "/control.sock").utf8.count > 100 {
            var template = Array("/tmp/vmfactory-run-XXXXXX".utf8CString)
            guard mkdtemp(&template) != nil else { throw VMFactoryError.io("cannot create a folder for the run's sockets in", path: "/tmp") }
            sockets = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        } else {
            try FileStore.createDirectory(sockets)
        }
        return Folder(id: id, path: path, sockets: sockets, lock: lock)
    }

    /// Folders of runs that are gone and were not kept.
    public func removeLeftovers() {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [] {
            let path = root + "/" + name
            guard !name.hasPrefix("."), FileStore.isDirectory(path), !FileStore.exists(path + "/" + Self.keptMarker),
                  !FileStore.exists(path + "/" + Self.detachedMarker) else { continue }
            guard let lock = FileLock.tryAcquire(path + "/" + Self.lockName) else { continue }
            try? FileStore.removeTree(path)
            lock.release()
        }
    }
}
