import CExt4
import Foundation
import VMFactoryCore

/// What `image.json` beside a converted disk says: the image, the disk and how it was made.
public struct RootfsRecord: Codable, Sendable, Equatable {
    public struct DiskFile: Codable, Sendable, Equatable {
        /// The file's name in the entry's folder: `disk.qcow2` or `disk.raw`.
        public var file: String
        public var format: String
        /// qcow2's cluster compression: zstd, zlib or none.
        public var compression: String
        public var sha256: SHA256Digest
        /// The file's own size in bytes.
        public var size: Int64
        /// The size of the file system, which the guest sees.
        public var virtualSize: Int64
        /// The sha256 of each piece, which a cache hit checks on every core at once.
        public var pieces: PieceDigests
    }

    public var schemaVersion = 1
    /// The references that named this image when it was converted, newest last.
    public var references: [String]
    public var manifestDigest: String
    public var configDigest: String
    public var platform: String
    /// Entrypoint, Cmd, Env, WorkingDir, User, ExposedPorts, Volumes, Labels, StopSignal.
    public var config: ImageConfig.Execution
    public var disk: DiskFile
    public var entries: Int
    /// The conversion options and the converter, as in the cache key.
    public var size: String
    public var converter: String
    /// The qemu-img that wrote a qcow2 (not part of the key: it changes the layout of the
    /// file, not the file system in it).
    public var qemuImg: String?
}

/// Converted disks: `<cache>/rootfs/<key>/{disk.qcow2|disk.raw, image.json, verified.json,
/// last-used}`, the key made of the manifest digest, the options and the converter. An entry is
/// made in a temporary folder and renamed into place whole, so that a killed conversion leaves
/// nothing a later run takes for a disk.
public struct RootfsCache: Sendable {
    public let root: String

    public init(cacheDirectory: String) {
        root = cacheDirectory + "/rootfs"
    }

    /// What changes a disk's bytes besides the image and options: this number, bumped whenever
    /// the conversion writes different bytes, the libext2fs that writes the file system and,
    /// for qcow2, the qemu-img that writes the file (known by its size and time, so that a
    /// cache hit starts no process).
    public static func converterVersion(qemuImg: String?) -> String {
        var parts = ["vmfactory-rootfs 1", "libext2fs " + String(cString: vmf_ext4_library_version())]
        if let qemuImg {
            var st = stat()
            let identity = stat(qemuImg, &st) == 0 ? "\(st.st_size)-\(st.st_mtim.tv_sec)" : "missing"
            parts.append("qemu-img \(qemuImg) \(identity)")
        }
        return parts.joined(separator: ", ")
    }

    public static func key(manifest: SHA256Digest, platform: Platform, options: DiskOptions, converter: String) -> SHA256Digest {
        var key = KeyBuilder("vmfactory rootfs")
        key.add("manifest", manifest.hex)
        key.add("platform", platform.description)
        key.add("size", options.size.description)
        key.add("format", options.format.rawValue)
        key.add("compression", options.compression.rawValue)
        key.add("converter", converter)
        return key.digest
    }

    public struct Entry: Sendable {
        public var key: String
        public var folder: String
        public var record: RootfsRecord
        public var diskPath: String { folder + "/" + record.disk.file }
        public var lastUsed: Date?
    }

    func folder(_ key: SHA256Digest) -> String { root + "/" + key.hex }
    func lockPath(_ key: SHA256Digest) -> String { root + "/" + key.hex + ".lock" }

    /// Held while an entry is made or removed.
    func lock(_ key: SHA256Digest, console: Console) async throws -> FileLock {
        try await FileLock.acquire(lockPath(key)) {
            console.info("rootfs: another vmfactory is converting this image; waiting for it")
        }
    }

    /// The entry for `key` if its disk is still the one recorded. The disk is read in full once,
    /// every byte checked against the sha256 of its piece, and what stat(2) says of its file
    /// then is kept in `verified.json`; while stat says the same, the disk is taken without
    /// reading a byte of it, so that a hit costs as little for a 1 GiB disk as for a 2 MiB one.
    /// A disk whose file differs (touched, copied, restored from a backup, or written to: the
    /// disk is read-only, but root and a chmod get past that) is read in full again: kept, with
    /// its new identity, if its bytes are still the recorded ones; removed and reported if not.
    func lookup(_ key: SHA256Digest, console: Console) async throws -> Entry? {
        let folder = self.folder(key)
        guard let entry = read(folder) else { return nil }
        let identity = FileIdentity.of(entry.diskPath)
        if let identity, identity == verifiedIdentity(folder) { return entry }
        console.debug("rootfs: reading all of \(FileStore.displayPath(entry.diskPath)) to check it: \(FileStore.exists(folder + "/" + Self.verifiedFile) ? "its file changed since it was last checked" : "it was never checked by this vmfactory")")
        let recorded = entry.record.disk.pieces
        let actual = try await PieceDigests.of(file: entry.diskPath, pieceSize: recorded.pieceSize)
        guard actual == recorded, FileStore.fileSize(entry.diskPath) == entry.record.disk.size else {
            let piece = zip(actual.pieces, recorded.pieces).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(actual.pieces.count, recorded.pieces.count)
            console.warning("the cached disk \(FileStore.displayPath(entry.diskPath)) changed since it was made (from byte \(piece * recorded.pieceSize) on); converting again")
            try await BlockingWork.run("removing \(folder)") { _ in try FileStore.removeTree(folder) }
            return nil
        }
        // Only an identity that held from before the first byte was read to after the last
        // vouches for what was read; a file written meanwhile is checked again next time.
        if let identity, identity == FileIdentity.of(entry.diskPath) {
            try recordVerified(identity, in: folder)
        }
        return entry
    }

    /// Where an entry keeps the identity of its disk file when its pieces last checked out.
    ///
    /// A file of its own rather than a field of `image.json`: `image.json` says what the disk
    /// is (and `vmfactory rootfs --format json` prints it), the same in any cache, while this
    /// says where and when one copy of it was last read, which a copy or a restore makes
    /// stale; it is rewritten after such a check without touching the record, and an entry
    /// without one (made before it existed) is simply read in full once.
    static let verifiedFile = "verified.json"

    /// The identity recorded in `folder`, if any.
    func verifiedIdentity(_ folder: String) -> FileIdentity? {
        guard let data = try? FileStore.readData(folder + "/" + Self.verifiedFile) else { return nil }
        return try? JSON.decode(FileIdentity.self, from: data, what: folder + "/" + Self.verifiedFile)
    }

    func recordVerified(_ identity: FileIdentity, in folder: String) throws {
        try FileStore.writeAtomically(try JSON.encode(identity), to: folder + "/" + Self.verifiedFile)
    }

    /// The entry in `folder`, if it holds a complete one.
    func read(_ folder: String) -> Entry? {
        guard let data = try? FileStore.readData(folder + "/image.json"),
              let record = try? JSON.decode(RootfsRecord.self, from: data, what: folder),
              FileStore.isRegularFile(folder + "/" + record.disk.file) else { return nil }
        let lastUsed = (try? FileManager.default.attributesOfItem(atPath: folder + "/last-used"))?[.modificationDate] as? Date
        return Entry(key: URL(fileURLWithPath: folder).lastPathComponent, folder: folder, record: record, lastUsed: lastUsed)
    }

    /// Records a use: the time, and `reference` among the entry's references.
    func touch(_ entry: inout Entry, reference: String) throws {
        if entry.record.references.last != reference {
            entry.record.references.removeAll { $0 == reference }
            entry.record.references.append(reference)
            try FileStore.writeAtomically(try JSON.encode(entry.record), to: entry.folder + "/image.json")
        }
        let stamp = entry.folder + "/last-used"
        if FileStore.exists(stamp) {
            guard utimes(stamp, nil) == 0 else { throw VMFactoryError.io("cannot update", path: stamp) }
        } else {
            try FileStore.writeAtomically(Data(), to: stamp)
        }
        entry.lastUsed = Date()
    }

    /// Makes the entry for `key`: `make` fills a fresh folder, which becomes the entry.
    func store(_ key: SHA256Digest, make: (_ folder: String) async throws -> RootfsRecord) async throws -> Entry {
        removeLeftovers()
        let final = folder(key)
        let temporary = FileStore.temporaryName(for: final)
        try FileStore.createDirectory(temporary)
        do {
            let record = try await make(temporary)
            try FileStore.writeAtomically(try JSON.encode(record), to: temporary + "/image.json")
            // `make` hashed the pieces of the disk it wrote, read-only by then, so the disk as
            // it stands is verified. Renaming the folder changes the folder, not the file.
            if let identity = FileIdentity.of(temporary + "/" + record.disk.file) {
                try recordVerified(identity, in: temporary)
            }
            try FileStore.writeAtomically(Data(), to: temporary + "/last-used")
            if FileStore.exists(final) { try FileStore.removeTree(final) }
            try FileStore.rename(temporary, to: final)
        } catch {
            try? FileStore.removeTree(temporary)
            throw error
        }
        guard let entry = read(final) else { throw VMFactoryError(.internalError, "the new entry \(final) cannot be read back") }
        return entry
    }

    /// Every complete entry, most recently used first.
    public func list() -> [Entry] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return names.filter { !$0.hasPrefix(".") && !$0.hasSuffix(".lock") }.compactMap { read(root + "/" + $0) }
            .sorted { ($0.lastUsed ?? .distantPast, $0.key) > ($1.lastUsed ?? .distantPast, $1.key) }
    }

    /// Entries whose reference, manifest digest (or a prefix of its hex of at least 8
    /// characters), or key is `selector`.
    public func entries(matching selector: String) -> [Entry] {
        let hex = selector.hasPrefix("sha256:") ? String(selector.dropFirst(7)) : selector
        return list().filter { entry in
            entry.record.references.contains(selector)
                || entry.record.manifestDigest == selector
                || (hex.count >= 8 && (entry.record.manifestDigest.dropFirst(7).hasPrefix(hex) || entry.key.hasPrefix(hex)))
        }
    }

    /// Removes entries (each under its lock; one in use is left alone with a warning).
    public func remove(_ entries: [Entry], console: Console) async throws -> [Entry] {
        var removed: [Entry] = []
        for entry in entries {
            guard let key = SHA256Digest(hex: entry.key) else { continue }
            try FileStore.createDirectory(root)
            let lockFile = lockPath(key)
            if !FileStore.exists(lockFile) { try FileStore.writeAtomically(Data(), to: lockFile) }
            guard let lock = FileLock.tryAcquire(lockFile) else {
                console.warning("\(FileStore.displayPath(entry.folder)) is in use by another vmfactory; left alone")
                continue
            }
            defer { lock.release() }
            try await BlockingWork.run("removing \(entry.folder)") { _ in try FileStore.removeTree(entry.folder) }
            try? FileManager.default.removeItem(atPath: lockFile)
            removed.append(entry)
        }
        return removed
    }

    /// Removes what killed conversions left: temporary entry folders of processes that are gone.
    func removeLeftovers() {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        for name in names where name.hasPrefix(".") && name.hasSuffix(".partial") {
            let base = name.dropFirst().split(separator: ".").first.map(String.init) ?? ""
            FileStore.removeLeftovers(of: root + "/" + base)
        }
    }
}
