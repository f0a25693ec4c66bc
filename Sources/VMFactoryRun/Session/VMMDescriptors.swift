import Foundation
import VMFactoryCore
import VMFactoryLifecycle

/// What a run opens for QEMU before it starts: the kernel, the initrd, the overlay and its
/// backing disk, the 9p folders, and one end of a socket pair for the run's channel and for passt. QEMU
/// inherits them, so a QEMU that runs as an unprivileged user reaches exactly these files and
/// nothing else of the cache's.
final class VMMDescriptors: @unchecked Sendable {
    private(set) var inherited: RunPlan.Inherited
    /// Our end of the run channel's socket pair.
    private(set) var channel: Int32 = -1
    /// Our end of QEMU's monitor (QMP), for pause and resume.
    private(set) var monitor: Int32 = -1
    /// passt's end of its socket pair.
    private(set) var passt: Int32?
    /// Our ends towards QEMU and towards passt, for the frame filter between them.
    private(set) var filterEnds: (guest: Int32, passt: Int32)?
    private var open: [Int32] = []
    private var childEndsClosed = false

    /// Opens everything `plan` needs. With `identity`, the run's overlay becomes that user's
    /// (mode 0600), and the kernel and initrd are checked to be readable by that user.
    init(plan: RunPlan, files: RunPlan.Files, identity: ProcessIdentity?) throws {
        var opened: [Int32] = []
        func openFile(_ path: String, _ flags: Int32, what: String) throws -> Int32 {
            let fd = Glibc.open(path, flags | O_CLOEXEC)
            guard fd >= 0 else { throw VMFactoryError.io("cannot open \(what)", path: path) }
            opened.append(fd)
            return fd
        }
        do {
            if let identity, plan.root.disk != nil {
                guard chown(files.overlay, identity.uid, identity.gid) == 0, chmod(files.overlay, 0o600) == 0 else {
                    throw VMFactoryError.io("cannot give QEMU's user (\(identity)) the run's overlay", path: files.overlay)
                }
            }
            if let identity {
                try Self.checkReadable(plan.kernel, what: "kernel", identity: identity)
                try Self.checkReadable(plan.initrd, what: "initrd", identity: identity)
            }
            inherited = RunPlan.Inherited(
                kernel: try openFile(plan.kernel, O_RDONLY, what: "the kernel"),
                initrd: try openFile(plan.initrd, O_RDONLY, what: "the initrd"),
                overlay: try plan.root.disk.map { _ in try openFile(files.overlay, plan.readOnly ? O_RDONLY : O_RDWR, what: "the run's overlay") },
                backing: try plan.root.disk.map { try openFile($0, O_RDONLY, what: "the image's disk") }
            )
            let (ours, theirs) = try SocketIO.pair()
            opened += [ours, theirs]
            channel = ours
            inherited.channel = theirs
            let (monitorOurs, monitorTheirs) = try SocketIO.pair()
            opened += [monitorOurs, monitorTheirs]
            monitor = monitorOurs
            inherited.monitor = monitorTheirs
            for (index, volume) in plan.volumes.enumerated() where volume.kind == .ninep {
                inherited.folders[index] = try openFile(volume.host, O_RDONLY | O_DIRECTORY, what: "the volume")
            }
            if plan.network.usesPasst {
                let (guestSide, qemuEnd) = try SocketIO.pair()
                let (passtSide, passtEnd) = try SocketIO.pair()
                opened += [guestSide, qemuEnd, passtSide, passtEnd]
                inherited.network = qemuEnd
                passt = passtEnd
                filterEnds = (guestSide, passtSide)
            }
        } catch {
            for fd in opened { close(fd) }
            throw error
        }
        open = opened
    }

    /// Hands our ends towards QEMU and passt to the frame filter, which closes them.
    func takeFilterEnds() -> (guest: Int32, passt: Int32)? {
        guard let ends = filterEnds else { return nil }
        filterEnds = nil
        open.removeAll { $0 == ends.guest || $0 == ends.passt }
        return ends
    }

    /// The tap in the container's network namespace, for QEMU.
    func takeTap(_ fd: Int32) {
        open.append(fd)
        inherited.tap = fd
    }

    /// A connection to virtiofsd's socket, for QEMU: a volume's, or the root's (nil).
    func connectVirtiofs(_ index: Int?, socket: String) throws {
        let fd = try SocketIO.connect(to: socket)
        open.append(fd)
        if let index { inherited.virtiofs[index] = fd } else { inherited.root = fd }
    }

    /// A socket pair between QEMU and virtfs-proxy-helper for the root (nil) or a volume:
    /// QEMU's end inherited, the helper's returned (closed with the rest of the children's ends).
    func makeProxyPair(volume index: Int?) throws -> Int32 {
        let (qemuEnd, helperEnd) = try SocketIO.pair()
        open += [qemuEnd, helperEnd]
        if let index { inherited.proxies[index] = qemuEnd } else { inherited.root = qemuEnd }
        return helperEnd
    }

    /// Closes what only QEMU and passt use, once they have their copies.
    func closeChildEnds() {
        guard !childEndsClosed else { return }
        childEndsClosed = true
        for fd in open where fd != channel && fd != monitor { close(fd) }
        open = open.filter { $0 == channel || $0 == monitor }
    }

    /// Closes everything still open (our end of the channel is the session's to close once
    /// it took it).
    func closeAll(keepingChannel: Bool) {
        for fd in open where !(keepingChannel && fd == channel) { close(fd) }
        open = []
    }

    /// Whether `identity` may use `mode` on a file of `st` (owner, group, others; ACLs aside).
    static func allows(_ st: stat, identity: ProcessIdentity, read: Bool, write: Bool, search: Bool) -> Bool {
        let bits: mode_t
        if st.st_uid == identity.uid {
            bits = (st.st_mode >> 6) & 7
        } else if st.st_gid == identity.gid || identity.groups.contains(st.st_gid) {
            bits = (st.st_mode >> 3) & 7
        } else {
            bits = st.st_mode & 7
        }
        return (!read || bits & 4 != 0) && (!write || bits & 2 != 0) && (!search || bits & 1 != 0)
    }

    /// A 9p folder that QEMU's user cannot use would fail inside the guest, file by file:
    /// say so before the run, with what to do. `test` asks the kernel as that user (mode bits
    /// and ACLs), through the open folder, as QEMU reaches it (the path's parents aside).
    static func checkAccess(_ volume: Volume, identity: ProcessIdentity, environment: [String: String]) async throws {
        let fd = Glibc.open(volume.host, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw VMFactoryError.io("cannot open the volume", path: volume.host) }
        defer { close(fd) }
        let folder = RunPlan.Inherited.path(fd)
        var tests = ["-r", folder, "-a", "-x", folder]
        if !volume.readOnly { tests += ["-a", "-w", folder] }
        let command = Command("test", tests)
        let child = try await ChildProcess.spawn(command, environment: command.environment(on: environment), stdout: .null, stderr: .null, identity: identity, keeping: [fd])
        guard await child.wait() != .exited(0) else { return }
        var st = stat()
        _ = fstat(fd, &st)
        let needs = volume.readOnly ? "r-x" : "rwx"
        throw VMFactoryError(
            .invalidArgument,
            "QEMU runs as \(identity), which cannot use the volume \(volume.host) (owner \(st.st_uid), group \(st.st_gid), mode \(String(st.st_mode & 0o7777, radix: 8))): it needs \(needs)",
            hint: "give that user access (setfacl -m u:\(identity.uid):\(needs) \(volume.host), or chown \(identity.uid) \(volume.host)), choose the user with --vmm-user"
                + (volume.readOnly ? "" : ", or mount the volume read-only")
        )
    }

    /// QEMU reopens the kernel and the initrd through /proc/self/fd, which checks the file's
    /// own mode.
    static func checkReadable(_ path: String, what: String, identity: ProcessIdentity) throws {
        var st = stat()
        guard stat(path, &st) == 0 else { throw VMFactoryError.io("cannot read", path: path) }
        guard !allows(st, identity: identity, read: true, write: false, search: false) else { return }
        throw VMFactoryError(
            .invalidArgument, "QEMU runs as \(identity), which cannot read the \(what) \(path) (mode \(String(st.st_mode & 0o7777, radix: 8)))",
            hint: "make it readable (chmod a+r \(path)), or choose the user with --vmm-user"
        )
    }
}
