import Foundation
import Synchronization
import VMFactoryBoot
import VMFactoryCore
import VMFactoryLifecycle

/// Saved VMs to start runs from (docs/run.md, "Templates"): the first run of a machine boots
/// cold and, when the init says hello (before any run's settings), is paused and saved here
/// with QEMU's migration; later runs of the same machine start QEMU with `-incoming` from the
/// saved state and send their settings to an init that is already waiting for them.
///
/// A template is a folder `<cache>/templates/<key>/` holding `state` (QEMU's migration
/// stream) and `template.json`. It appears by a rename, whole; `<key>.lock` is held while one
/// run makes it, and a run that finds it held boots cold without making another.
public struct RunTemplates: Sendable {
    public let directory: String

    public init(cacheDirectory: String) {
        directory = cacheDirectory + "/templates"
    }

    public init(directory: String) {
        self.directory = directory
    }

    /// What names a template: everything the saved state depends on. A digest of `text`.
    public struct Key: Sendable, Equatable {
        public var digest: String
        /// One fact a line: the QEMU binary, kernel and initrd (by file identity), the
        /// machine's arguments with the run's own descriptors and names left out, the disk's
        /// virtual size.
        public var text: String

        public init(text: String) {
            self.text = text
            digest = SHA256Digest.of(Data(text.utf8)).hex
        }

        /// The short form `vmfactory templates` shows.
        public var short: String { String(digest.prefix(12)) }
    }

    /// A key's line for the file at `path`: where it is and which file it is. A rebuilt
    /// kernel or initrd, an upgraded QEMU, are other files (another inode, size or mtime; the
    /// change time is left out: a chmod or a hard link is the same kernel).
    static func keyLine(_ path: String) -> String? {
        let resolved = FileStore.realPath(path) ?? path
        guard let file = FileIdentity.of(resolved) else { return nil }
        return "\(resolved) dev=\(file.device) ino=\(file.inode) size=\(file.size) mtime=\(file.modified)"
    }

    /// `template.json`.
    public struct Record: Sendable, Codable {
        public var key: String
        public var target: String
        public var memoryMiB: Int
        public var cpus: Int
        public var accelerator: String
        /// The run protocol version the init said in its hello, before it was saved: a
        /// restored VM does not say it again.
        public var protocolVersion: UInt32
        public var created: Date
        /// The size of the disk the template's kernel knows (nil: a folder root). A run's
        /// disk of another size is resized on QEMU's side, so that the guest reads it anew.
        public var diskSize: UInt64?
        /// The state file as it was written: a template whose state is not this file (cut
        /// short, written over, copied) is not loaded.
        public var state: FileIdentity
        /// How long making it took (pause, save, write), in seconds.
        public var saveSeconds: Double
        /// The key's text.
        public var description: String
    }

    /// A template found in the cache.
    public struct Template: Sendable {
        public var folder: String
        public var record: Record
        public var statePath: String { folder + "/state" }
    }

    public func folder(_ key: Key) -> String { directory + "/" + key.digest }

    /// Why a plan cannot start from a template (it then boots cold), or nil.
    public static func ineligibility(of plan: RunPlan) -> String? {
        if plan.volumes.contains(where: { $0.kind == .virtiofs }) || plan.root.folder != nil && plan.rootShare == .virtiofs {
            return "QEMU 7.2 cannot migrate a virtio-fs device (vhost-user-fs), so a run with one boots cold; 9p volumes (-v HOST:GUEST) start from templates"
        }
        if plan.namespaceNetwork != nil {
            return "the engine's network gives each container its own MAC address on the NIC, which a template would fix"
        }
        return nil
    }

    /// The key of `plan` with the QEMU command it runs (`command`, as `RunPlan.qemu` makes it)
    /// and the virtual size of its disk; nil when the QEMU binary, kernel or initrd cannot be
    /// found (the run's own error says so).
    public static func key(plan: RunPlan, command: Command, diskSize: UInt64?, environment: [String: String]) -> Key? {
        guard let qemu = try? ChildProcess.resolveExecutable(command.executable, path: environment["PATH"] ?? "/usr/bin:/bin"),
              let qemuLine = keyLine(qemu), let kernel = keyLine(plan.kernel), let initrd = keyLine(plan.initrd) else { return nil }
        var lines = [
            "vmfactory template 1", "protocol \(RunProtocol.version)", "target \(plan.target.rawValue)",
            "qemu " + qemuLine, "kernel " + kernel, "initrd " + initrd,
        ]
        // A run's disk may differ in size from the template's: QEMU tells the guest of the
        // new size (block_resize). Not a read-only disk's, which QEMU does not resize.
        if let diskSize, plan.readOnly { lines.append("disk \(diskSize)") }
        // Under KVM the saved guest may use what the host's CPU and kernel offered it.
        if plan.accelerator == .kvm { lines.append("host \(HostInfo.kernelRelease) \(HostInfo.cpuModel)") }
        lines.append("arguments " + shape(of: command.arguments).joined(separator: " "))
        return Key(text: lines.joined(separator: "\n") + "\n")
    }

    /// The machine's arguments without what differs from run to run and is not the VM's:
    /// its name, descriptor numbers (and the /proc/self/fd paths made of them).
    static func shape(of arguments: [String]) -> [String] {
        var shaped: [String] = []
        var skipNext = false
        for argument in arguments {
            if skipNext {
                skipNext = false
                continue
            }
            if argument == "-name" {
                skipNext = true
                continue
            }
            var text = argument
            for prefix in ["/proc/self/fd/", "sock_fd=", "fd=", "addr.str="] {
                text = replacingNumbers(after: prefix, in: text)
            }
            shaped.append(text)
        }
        return shaped
    }

    /// `prefix` followed by digits becomes `prefix` followed by `N`.
    static func replacingNumbers(after prefix: String, in text: String) -> String {
        var result = ""
        var rest = Substring(text)
        while let range = rest.range(of: prefix) {
            result += rest[..<range.upperBound]
            rest = rest[range.upperBound...]
            let digits = rest.prefix { $0.isASCII && $0.isNumber }
            if !digits.isEmpty {
                result += "N"
                rest = rest.dropFirst(digits.count)
            }
        }
        return result + rest
    }

    /// The template of `key` if there is a complete one whose state is the file it wrote,
    /// with its state open for reading (the caller closes it): a template removed or changed
    /// after this is not this run's concern. A changed one is removed with a warning (the run
    /// boots cold and makes it again); one that cannot be opened is left alone.
    public func find(_ key: Key, console: Console) -> (template: Template, state: Int32)? {
        let folder = self.folder(key)
        guard let data = try? FileStore.readData(folder + "/template.json") else { return nil }
        guard let record = try? JSON.decode(Record.self, from: data, what: "a template's record"), record.key == key.digest else {
            console.warning("the template \(key.short) has an unreadable record; booting cold and making it again")
            discard(key)
            return nil
        }
        let template = Template(folder: folder, record: record)
        let fd = open(template.statePath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            console.debug("run: cannot open the template \(key.short) (\(String(cString: strerror(errno)))); booting cold")
            return nil
        }
        guard let state = FileIdentity.of(descriptor: fd), state == record.state else {
            close(fd)
            let size = FileStore.fileSize(template.statePath).map { ByteCount.format($0) } ?? "missing"
            console.warning("the template \(key.short) changed since it was made (its state is \(size), was \(ByteCount.format(record.state.size))); booting cold and making it again")
            discard(key)
            return nil
        }
        return (template, fd)
    }

    /// Removes the template of `key`, unless a run is making it.
    public func discard(_ key: Key) {
        _ = remove(key: key.digest)
    }

    /// Removes the template whose key is `digest` with its lock file; false when a run is
    /// making it (it is left alone).
    public func remove(key digest: String) -> Bool {
        guard let lock = try? lockFile(digest) else { return false }
        defer { lock.release() }
        try? FileStore.removeTree(directory + "/" + digest)
        return true
    }

    private func lockFile(_ key: Key) throws -> FileLock? {
        try lockFile(key.digest)
    }

    private func lockFile(_ digest: String) throws -> FileLock? {
        try FileStore.createDirectory(directory)
        let path = directory + "/" + digest + ".lock"
        // Made in place, never renamed over: every run locks the same inode.
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw VMFactoryError.io("cannot create the lock file", path: path) }
        close(fd)
        return FileLock.tryAcquire(path)
    }

    /// A template being made: its folder's temporary name and the state file QEMU writes.
    public final class Maker: Sendable {
        public let templates: RunTemplates
        public let key: Key
        let lock: FileLock
        let partial: String
        /// The state file, open for QEMU to write (passed with `getfd`).
        public let state: Int32
        /// Committed or abandoned: nothing more to do.
        private let done = Mutex(false)
        public var statePath: String { partial + "/state" }

        init(templates: RunTemplates, key: Key, lock: FileLock, partial: String, state: Int32) {
            self.templates = templates
            self.key = key
            self.lock = lock
            self.partial = partial
            self.state = state
        }

        /// The state written: synced, recorded, renamed into place. The lock goes with it.
        /// False when the making was abandoned first (the run ended during the save).
        @discardableResult
        public func commit(plan: RunPlan, diskSize: UInt64?, protocolVersion: UInt32, saveSeconds: Double) throws -> Bool {
            guard take() else { return false }
            defer { finish() }
            guard fsync(state) == 0 else { throw VMFactoryError.io("cannot sync the template's state", path: partial + "/state") }
            guard let identity = FileIdentity.of(partial + "/state"), identity.size > 0 else {
                throw VMFactoryError(.processFailed, "QEMU wrote no state for the template \(key.short)")
            }
            let record = Record(
                key: key.digest, target: plan.target.rawValue, memoryMiB: plan.memoryMiB, cpus: plan.cpus, accelerator: plan.accelerator.rawValue,
                protocolVersion: protocolVersion, created: Date(), diskSize: diskSize, state: identity, saveSeconds: saveSeconds, description: key.text
            )
            try FileStore.writeDurably(try JSON.encode(record), to: partial + "/template.json")
            let folder = templates.folder(key)
            if FileStore.exists(folder) { try FileStore.removeTree(folder) }
            // The folder's rename leaves the state file's inode, times and all, as it is.
            try FileStore.rename(partial, to: folder)
            return true
        }

        /// Gives up: the partial folder goes, the lock is released. Nothing once committed.
        public func abandon() {
            guard take() else { return }
            try? FileStore.removeTree(partial)
            finish()
        }

        /// True the first time: the one who ends the making.
        private func take() -> Bool {
            done.withLock { done in
                defer { done = true }
                return !done
            }
        }

        private func finish() {
            close(state)
            lock.release()
        }
    }

    /// Takes the right to make the template of `key`; nil when another run is making it (this
    /// one then boots cold and leaves it to that one).
    public func startMaking(_ key: Key) throws -> Maker? {
        guard let lock = try lockFile(key) else { return nil }
        let partial = directory + "/.\(key.digest).\(getpid()).partial"
        do {
            if FileStore.exists(partial) { try FileStore.removeTree(partial) }
            // Left by makers that were killed: nobody holds their lock.
            for leftover in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where leftover.hasPrefix(".\(key.digest).") {
                try? FileStore.removeTree(directory + "/" + leftover)
            }
            try FileStore.createDirectory(partial)
            let fd = open(partial + "/state", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw VMFactoryError.io("cannot create the template's state", path: partial + "/state") }
            return Maker(templates: self, key: key, lock: lock, partial: partial, state: fd)
        } catch {
            lock.release()
            throw error
        }
    }

    /// Removes the templates made from a QEMU, kernel or initrd that is no longer the file it
    /// was (rebuilt, upgraded, gone): no run can use them again. A maker calls it once its own
    /// template is in place. Returns the keys removed.
    @discardableResult
    public func pruneStale() -> [String] {
        var removed: [String] = []
        for (template, _) in list() {
            let stale = template.record.description.split(separator: "\n").contains { line in
                guard let space = line.firstIndex(of: " "), ["qemu", "kernel", "initrd"].contains(String(line[..<space])),
                      let identity = line.range(of: " dev=", options: .backwards) else { return false }
                let path = String(line[line.index(after: space)..<identity.lowerBound])
                // A file that is gone is stale; one this user cannot see is left to its owner.
                guard FileStore.exists(path) else { return true }
                guard let now = Self.keyLine(path) else { return false }
                return now != String(line[line.index(after: space)...])
            }
            if stale, remove(key: template.record.key) { removed.append(template.record.key) }
        }
        // What makers that were killed left: `.KEY.PID.partial`, whose lock nobody holds.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasPrefix(".") && name.hasSuffix(".partial") {
            let digest = String(name.dropFirst().prefix { $0 != "." })
            guard let lock = try? lockFile(digest) else { continue }
            try? FileStore.removeTree(directory + "/" + name)
            lock.release()
        }
        return removed
    }

    /// Every complete template, newest first, with the size of its folder.
    public func list() -> [(template: Template, bytes: Int64)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        var found: [(Template, Int64)] = []
        for name in names where !name.hasPrefix(".") && !name.hasSuffix(".lock") {
            let folder = directory + "/" + name
            guard let data = try? FileStore.readData(folder + "/template.json"),
                  let record = try? JSON.decode(Record.self, from: data, what: "a template's record") else { continue }
            found.append((Template(folder: folder, record: record), FileStore.diskUsage(folder)))
        }
        return found.sorted { $0.0.record.created > $1.0.record.created }
    }
}
