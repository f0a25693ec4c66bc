import Foundation
import VMFactoryCore

/// The runs in `<cache>/runs/`, as `ps`, `exec`, `stop`, `rm` and the rest find them: by id,
/// by a unique prefix of one, or by name. A name is a link `runs/.names/NAME` to the run's id,
/// made with symlink(2), so two runs never get one name.
public struct RunRegistry: Sendable {
    public var folders: RunFolders

    public init(folders: RunFolders) {
        self.folders = folders
    }

    public struct Entry: Sendable {
        public var path: String
        public var record: RunRecord
        /// Whether its supervisor still runs (it holds the folder's lock).
        public var alive: Bool
    }

    var namesFolder: String { folders.root + "/.names" }

    /// docker's rule for names.
    public static func isValidName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, name.utf8.count <= 128 else { return false }
        func plain(_ scalar: Unicode.Scalar) -> Bool { scalar.isASCII && (CharacterSet.alphanumerics.contains(scalar)) }
        return plain(first) && name.unicodeScalars.allSatisfy { plain($0) || "_.-".unicodeScalars.contains($0) }
    }

    /// Takes `name` for the run `id`; refused when another run has it.
    public func reserve(name: String, id: String) throws {
        guard Self.isValidName(name) else {
            throw VMFactoryError(.invalidArgument, "--name \(name) is not a valid name", hint: "use letters, digits, '_', '.' and '-', starting with a letter or digit")
        }
        try FileStore.createDirectory(namesFolder)
        let link = namesFolder + "/" + name
        for attempt in 0..<2 {
            if symlink(id, link) == 0 { return }
            let code = errno
            guard code == EEXIST, let owner = try? FileManager.default.destinationOfSymbolicLink(atPath: link) else {
                throw VMFactoryError.io("cannot take the name \(name) in", path: namesFolder, errno: code)
            }
            // A name whose run is gone (its folder removed, as a killed run's is) is free again.
            guard attempt == 0, !FileStore.isDirectory(folders.root + "/" + owner) else {
                throw VMFactoryError(.invalidArgument, "the name \(name) is already in use by the run \(owner)", hint: "remove that run (vmfactory rm \(name)) or choose another --name")
            }
            unlink(link)
        }
    }

    public func release(name: String, id: String) {
        let link = namesFolder + "/" + name
        if (try? FileManager.default.destinationOfSymbolicLink(atPath: link)) == id { unlink(link) }
    }

    /// Every run with a record, its status brought up to date.
    public func list() -> [Entry] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: folders.root)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
        return names.compactMap { entry(folders.root + "/" + $0) }.sorted { $0.record.created > $1.record.created }
    }

    /// The run at `path`, if it has a record. A run whose supervisor is gone but whose record
    /// says it runs was killed (the supervisor's end takes QEMU with it): its record says so
    /// from now on, with docker's 137.
    public func entry(_ path: String) -> Entry? {
        guard var record = try? RunRecord.read(folder: path) else { return nil }
        let alive = isAlive(path)
        if !alive, record.status != .exited, let lock = FileLock.tryAcquire(path + "/" + RunFolders.lockName) {
            defer { lock.release() }
            // Read again under the lock: the supervisor may have written its end just now.
            if let latest = try? RunRecord.read(folder: path), latest.status != .exited {
                record = latest
                record.status = .exited
                record.exitCode = 137
                record.finished = Date()
                record.message = "its supervisor (pid \(record.pid)) was killed; the VM ended with it"
                try? record.write(folder: path)
            } else if let latest = try? RunRecord.read(folder: path) {
                record = latest
            }
        }
        return Entry(path: path, record: record, alive: alive)
    }

    /// Whether the run's supervisor holds its folder's lock.
    public func isAlive(_ path: String) -> Bool {
        guard FileStore.exists(path + "/" + RunFolders.lockName) else { return false }
        guard let lock = FileLock.tryAcquire(path + "/" + RunFolders.lockName) else { return true }
        lock.release()
        return false
    }

    /// The run `reference` names: an id, a unique prefix of one, or a name.
    public func find(_ reference: String) throws -> Entry {
        if Self.isValidName(reference), let id = try? FileManager.default.destinationOfSymbolicLink(atPath: namesFolder + "/" + reference),
           let found = entry(folders.root + "/" + id) {
            return found
        }
        guard !reference.isEmpty, reference.allSatisfy(\.isHexDigit) else {
            throw VMFactoryError(.notFound, "no such run: \(reference)", hint: "`vmfactory ps -a` lists the runs")
        }
        let ids = ((try? FileManager.default.contentsOfDirectory(atPath: folders.root)) ?? []).filter { $0.hasPrefix(reference.lowercased()) }
        let found = ids.compactMap { entry(folders.root + "/" + $0) }
        guard found.count <= 1 else {
            throw VMFactoryError(.invalidArgument, "\(reference) names more than one run (\(found.map(\.record.id).joined(separator: ", ")))", hint: "give more of the id")
        }
        guard let only = found.first else {
            throw VMFactoryError(.notFound, "no such run: \(reference)", hint: "`vmfactory ps -a` lists the runs")
        }
        return only
    }

    /// Removes an ended run: its folder and its name.
    public func remove(_ entry: Entry) throws {
        guard let lock = FileLock.tryAcquire(entry.path + "/" + RunFolders.lockName) else {
            throw VMFactoryError(.invalidArgument, "the run \(entry.record.id) is still running", hint: "stop it first (vmfactory stop \(entry.record.id)), or remove it with rm -f")
        }
        if let name = entry.record.name { release(name: name, id: entry.record.id) }
        // The sockets' folder under /tmp that a long cache path made (RunFolders.create), and
        // nothing else the record might name.
        let sockets = URL(fileURLWithPath: entry.record.controlSocket).deletingLastPathComponent().path
        if sockets.hasPrefix("/tmp/vmfactory-run-"), !sockets.dropFirst("/tmp/".count).contains("/") { try? FileStore.removeTree(sockets) }
        try FileStore.removeTree(entry.path)
        lock.release()
    }
}
