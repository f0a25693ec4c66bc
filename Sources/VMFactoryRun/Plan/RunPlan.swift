import Foundation
import VMFactoryBoot
import VMFactoryCore
import VMFactoryImage
import VMFactoryLifecycle

/// Everything one `vmfactory run` boots, decided before anything starts: the kernel and
/// initrd of the container recipe, the image's cached disk, the process, the devices. What the
/// run asked for as it is (`RunOptions`) reads as the plan's own: `plan.memoryMiB`.
@dynamicMemberLookup
public struct RunPlan: Sendable {
    public var target: Target
    public var kernel: String
    /// The recipe's initrd (the run's settings come over the channel, not in it).
    public var initrd: String
    /// The recipe's kernel command line (the console and the boot trims).
    public var cmdline: String
    /// The guest's root.
    public var root: Root
    public var process: ContainerProcess
    public var hostname: String
    public var options: RunOptions
    /// `-p`, each with its host port taken.
    public var ports: [PortForward] = []
    public var accelerator: QEMUMachine.Accelerator = .tcg
    /// The host terminal's size, for -t.
    public var windowSize: (rows: Int, cols: Int)?

    /// Where the guest's root comes from.
    public enum Root: Sendable, Equatable {
        /// An image's converted disk: the read-only backing file of the run's qcow2 overlay.
        case disk(String)
        /// A host folder over virtio-fs, written in place (an OCI bundle's root).
        case folder(String)

        public var disk: String? { if case .disk(let path) = self { path } else { nil } }
        public var folder: String? { if case .folder(let path) = self { path } else { nil } }
    }

    /// The mount tag of a folder root.
    public static let rootTag = "vmf.root"

    /// How a folder root reaches the guest, each through a helper that runs as root so that
    /// QEMU need not: virtio-fs through virtiofsd, or 9p through virtfs-proxy-helper (chrooted
    /// into the folder) for a guest of the other byte order, which virtio-fs does not serve
    /// (FUSE speaks the host's).
    public enum RootShare: String, Sendable {
        case virtiofs
        case ninep = "9p"
    }

    /// The folder root's share for this target on this host.
    public var rootShare: RootShare {
        target.isBigEndian == (Target(rawValue: Target.hostMachine) ?? .x86_64).isBigEndian ? .virtiofs : .ninep
    }

    public subscript<Value>(dynamicMember path: WritableKeyPath<RunOptions, Value>) -> Value {
        get { options[keyPath: path] }
        set { options[keyPath: path] = newValue }
    }

    public enum Network: String, Sendable, Codable, CaseIterable {
        /// passt: the outside world as a container reaches it, and nothing that listens only
        /// on the host's loopback.
        case user
        /// passt behind the frame filter: the `-p` ports and nothing else.
        case restricted
        /// passt with the gateway address mapped to the host's loopback: `user` plus the
        /// host's loopback services at 10.0.2.2, for those who ask for them.
        case hostLoopback = "host-loopback"
        /// No network device.
        case none

        /// Whether the guest has a network device.
        public var hasDevice: Bool { self != .none }
        /// Whether passt serves the guest's network.
        public var usesPasst: Bool { self != .none }
    }

    /// The most memory TCG's translation cache takes (`-accel tcg,tb-size=`), in MiB.
    public static let translationCacheMiB = 128

    /// QEMU's seccomp filter for a guest vmfactory does not trust: no obsolete system calls,
    /// no set*id, no fork or exec, no scheduler or resource changes.
    public static let sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

    /// QEMU's user network: the guest's address, the gateway and the DNS forwarder.
    public static let guestAddress = "10.0.2.15"
    public static let netmask = "255.255.255.0"
    public static let gateway = "10.0.2.2"
    public static let dns = "10.0.2.3"

    public init(
        target: Target, kernel: String, initrd: String, cmdline: String, root: Root, process: ContainerProcess, hostname: String,
        options: RunOptions = RunOptions()
    ) {
        self.options = options
        self.root = root
        self.target = target
        self.kernel = kernel
        self.initrd = initrd
        self.cmdline = cmdline
        self.process = process
        self.hostname = hostname
    }

    public func volumeTag(_ index: Int) -> String { "vmf.v\(index)" }

    /// The run's settings frame's text (docs/run-protocol.md): one key=value a line, line
    /// breaks and backslashes escaped.
    public var settings: String {
        var lines: [(String, String)] = process.argv.map { ("arg", $0) } + process.environment.map { ("env", $0) }
        lines += [
            ("user", process.user), ("workdir", process.workdir), ("hostname", hostname),
            ("stopsignal", String(process.stopSignal)), ("readonly", options.readOnly ? "1" : "0"),
            ("stdin", options.interactive ? "1" : "0"), ("tty", options.tty ? "1" : "0"), ("verbose", options.verbose ? "1" : "0"), ("keep", options.keep ? "1" : "0"),
            // The init only needs to know whether there is a device to configure.
            ("network", options.network.hasDevice || options.namespaceNetwork != nil ? "user" : "none"), ("shmsize", String(options.shmBytes)),
        ]
        lines += process.privileges.settings
        // The disk's size: a VM restored from a template may still have the template's.
        if let disk = root.disk, let size = try? Qcow2Overlay.virtualSize(of: disk) { lines.append(("disksize", String(size))) }
        if root.folder != nil { lines.append(("root", "\(rootShare.rawValue) \(Self.rootTag)")) }
        if let pidsLimit = options.pidsLimit { lines.append(("pidslimit", String(pidsLimit))) }
        if let windowSize, options.tty { lines += [("rows", String(windowSize.rows)), ("cols", String(windowSize.cols))] }
        if let namespace = options.namespaceNetwork {
            // The namespace's own address; its DNS is the engine's resolv.conf, bound as a file.
            lines += [("address", namespace.address), ("netmask", namespace.netmask)]
            if let gateway = namespace.gateway { lines.append(("gateway", gateway)) }
        } else if options.network.hasDevice {
            lines += [("address", Self.guestAddress), ("netmask", Self.netmask), ("gateway", Self.gateway), ("dns", Self.dns)]
        }
        for (index, volume) in options.volumes.enumerated() {
            lines.append(("volume", "\(volume.kind.guestType) \(volumeTag(index)) \(volume.readOnly ? "ro" : "rw") \(volume.guest)"))
        }
        lines += options.tmpfs.map { ("tmpfs", $0.settingsValue) }
        lines += options.files.map { ("file", "\($0.readOnly ? "ro" : "rw") \($0.guest)\n\($0.content)") }
        return RunProtocol.keyValueText(lines)
    }

    /// The settings as the host sends them, once the init said hello, with what must be fresh
    /// in every VM, a restored one above all (docs/security.md): 32 bytes of the host's
    /// entropy for the guest's random generator. (The clock comes after, in the frame that
    /// answers the init's taken.)
    public var settingsFrame: RunProtocol.Frame {
        var seed = [UInt8](repeating: 0, count: Self.seedBytes)
        var generator = SystemRandomNumberGenerator()
        for index in seed.indices { seed[index] = generator.next() }
        let fresh = RunProtocol.keyValueText([("seed", seed.map { String(format: "%02x", $0) }.joined())])
        return RunProtocol.Frame(.settings, number: RunProtocol.version, text: settings + fresh)
    }

    /// How much of the host's entropy goes to the guest with the settings.
    public static let seedBytes = 32

    /// The recipe's command line with the word that puts the init in container mode, before
    /// any `--` (after which words are the init's arguments).
    public var runCmdline: String {
        var words = cmdline.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        words.insert(RunProtocol.runWord, at: words.firstIndex(of: "--") ?? words.endIndex)
        return words.joined(separator: " ")
    }

    /// Where the run's files are, for the QEMU command line.
    public struct Files: Sendable {
        public var overlay: String
        public var sockets: String
        /// Descriptors QEMU inherits instead of opening paths (a QEMU that runs as another
        /// user cannot reach the cache); nil for a command to read (`--print-qemu`).
        public var inherited: Inherited?
        public init(overlay: String, sockets: String) {
            self.overlay = overlay
            self.sockets = sockets
        }
        public var channelSocket: String { sockets + "/channel.sock" }
        /// The supervisor's control socket (`RunControl`).
        public var controlSocket: String { sockets + "/control.sock" }
        public func virtiofsSocket(_ index: Int) -> String { sockets + "/fs\(index).sock" }
        /// virtfs-proxy-helper's socket for the volume at `index` (for a command to read).
        public func proxySocket(_ index: Int) -> String { sockets + "/proxy\(index).sock" }
        /// virtiofsd's socket for a folder root.
        public var rootSocket: String { sockets + "/root.sock" }
        public var networkSocket: String { sockets + "/net.sock" }
    }

    /// What the run opened for QEMU, by the descriptor numbers QEMU gets.
    public struct Inherited: Sendable {
        public var kernel: Int32
        public var initrd: Int32
        /// The run's overlay and the image's cached disk, its backing file (read-only), for a
        /// disk root.
        public var overlay: Int32?
        public var backing: Int32?
        /// The connection to virtiofsd for a folder root.
        public var root: Int32?
        /// QEMU's end of the run channel's socket pair.
        public var channel: Int32?
        /// The 9p volumes' host folders, by volume index.
        public var folders: [Int: Int32] = [:]
        /// Connections to virtiofsd, by volume index.
        public var virtiofs: [Int: Int32] = [:]
        /// QEMU's ends of the socket pairs to virtfs-proxy-helper, by volume index.
        public var proxies: [Int: Int32] = [:]
        /// QEMU's end of passt's socket pair.
        public var network: Int32?
        /// The tap device in the container's network namespace.
        public var tap: Int32?
        /// QEMU's end of its monitor's socket pair (QMP).
        public var monitor: Int32?

        public init(kernel: Int32, initrd: Int32, overlay: Int32?, backing: Int32?) {
            self.kernel = kernel
            self.initrd = initrd
            self.overlay = overlay
            self.backing = backing
        }

        public var all: [Int32] {
            [kernel, initrd] + [overlay, backing, root, channel].compactMap { $0 } + Array(folders.values) + Array(virtiofs.values) + Array(proxies.values) + [network, tap, monitor].compactMap { $0 }
        }

        /// A path that opens what `fd` is open on, for QEMU's options that take paths.
        public static func path(_ fd: Int32) -> String { "/proc/self/fd/\(fd)" }
    }

    /// The QEMU command: the machine, the console on QEMU's stdout, the disk overlay, the
    /// ports, the RNG, the network and the volumes.
    public func qemu(_ files: Files) -> Command {
        let s390 = target == .s390x
        func device(_ name: String) -> String { name + (s390 ? "-ccw" : "-device") }
        let sharedMemory = options.volumes.contains { $0.kind == .virtiofs } || root.folder != nil && rootShare == .virtiofs
        let inherited = files.inherited
        func path(_ fd: Int32?, _ fallback: String) -> String { fd.map(Inherited.path) ?? fallback }
        // The machine as boot and bench start it (console, kernel, isa-debug-exit), and what a
        // run adds to it.
        var machine = QEMUMachine(
            target: target, kernel: path(inherited?.kernel, kernel), initrd: path(inherited?.initrd, initrd), cmdline: runCmdline,
            memory: "\(options.memoryMiB)M", cpus: options.cpus, accelerator: accelerator, icount: options.icount, debugExit: true
        )
        // The name says whose QEMU this is (ps, /proc): it opens nothing by path otherwise.
        machine.name = "vmfactory-run:" + (files.overlay as NSString).deletingLastPathComponent
        if sharedMemory { machine.machineOptions = ["memory-backend=mem"] }
        // TCG's translation cache grows as the guest meets new code, up to QEMU 7.2's default
        // of 1 GiB: bounded here (no slower to boot, measured).
        if accelerator == .tcg { machine.acceleratorOptions = ["tb-size=\(Self.translationCacheMiB)"] }
        machine.extra = ["-sandbox", Self.sandbox]
        // Modern virtio-mmio (version 2): virtio-fs refuses legacy devices, and the rest work either way.
        if !s390 { machine.extra += ["-global", "virtio-mmio.force-legacy=false"] }
        // vhost-user needs guest memory that virtiofsd can map.
        if sharedMemory { machine.extra += ["-object", "memory-backend-memfd,id=mem,size=\(options.memoryMiB)M,share=on"] }
        var arguments = machine.arguments
        switch root {
        case .disk:
            let overlay = inherited?.overlay.map(Inherited.path) ?? files.overlay
            arguments += [
                "-drive", "file=\(overlay),if=none,id=root,format=qcow2,discard=unmap\(options.readOnly ? ",readonly=on" : "")"
                    + (inherited?.backing.map { ",backing.file.filename=\(Inherited.path($0))" } ?? ""),
                "-device", device("virtio-blk") + ",drive=root",
            ]
        case .folder where rootShare == .virtiofs:
            arguments += [
                "-chardev", "socket,id=rootfs," + (inherited?.root.map { "fd=\($0)" } ?? "path=\(files.rootSocket)"),
                "-device", device("vhost-user-fs") + ",chardev=rootfs,tag=\(Self.rootTag)",
            ]
        case .folder:
            arguments += [
                "-fsdev", "proxy,id=rootfs," + (inherited?.root.map { "sock_fd=\($0)" } ?? "socket=\(files.rootSocket)") + (options.readOnly ? ",readonly=on" : ""),
                "-device", device("virtio-9p") + ",fsdev=rootfs,mount_tag=\(Self.rootTag)",
            ]
        }
        // One port, the run's channel (and port 0, which the bus keeps for a console): the
        // guest sets up two queues for every port there could be.
        let channel = inherited?.channel.map { "fd=\($0)" } ?? "path=\(files.channelSocket)"
        arguments += [
            "-device", device("virtio-serial") + ",id=ports,max_ports=2",
            "-chardev", "socket,id=channel,\(channel)", "-device", "virtserialport,bus=ports.0,chardev=channel,name=\(RunProtocol.port)",
        ]
        arguments += ["-object", "rng-random,id=rng,filename=/dev/urandom", "-device", device("virtio-rng") + ",rng=rng"]
        // QMP for the supervisor alone (pause and resume), on a socket pair.
        if let monitor = inherited?.monitor { arguments += ["-chardev", "socket,id=qmp,fd=\(monitor)", "-mon", "chardev=qmp,mode=control"] }
        if options.network.hasDevice {
            // passt, behind vmfactory's frame filter, on a stream of frames: never QEMU's own
            // user network, which gives the guest the host's loopback.
            let endpoint = inherited?.network.map { "addr.type=fd,addr.str=\($0)" } ?? "addr.type=unix,addr.path=\(files.networkSocket)"
            arguments += ["-netdev", "stream,id=net,server=off,\(endpoint)", "-device", device("virtio-net") + ",netdev=net"]
        }
        if let namespace = options.namespaceNetwork {
            // A tap in the engine's network namespace, with the veth's MAC (the namespace's
            // neighbours know it); no vhost (the host has no /dev/vhost-net).
            let tap = inherited?.tap.map { "fd=\($0)" } ?? "ifname=\(NamespaceNetwork.tap),script=no,downscript=no"
            arguments += ["-netdev", "tap,id=net,\(tap),vhost=off", "-device", device("virtio-net") + ",netdev=net,mac=\(namespace.mac)"]
        }
        for (index, volume) in options.volumes.enumerated() {
            switch volume.kind {
            case .ninep:
                arguments += [
                    // mapped-xattr: what the guest sets (owners, modes, devices) lives in
                    // user.virtfs.* attributes; the host's file is QEMU's user's, 0600 or 0700.
                    "-fsdev", "local,id=fs\(index),path=\(path(inherited?.folders[index], volume.host)),security_model=mapped-xattr\(volume.readOnly ? ",readonly=on" : "")",
                    "-device", device("virtio-9p") + ",fsdev=fs\(index),mount_tag=\(volumeTag(index))",
                ]
            case .ninepProxy:
                arguments += [
                    "-fsdev", "proxy,id=fs\(index)," + (inherited?.proxies[index].map { "sock_fd=\($0)" } ?? "socket=\(files.proxySocket(index))") + (volume.readOnly ? ",readonly=on" : ""),
                    "-device", device("virtio-9p") + ",fsdev=fs\(index),mount_tag=\(volumeTag(index))",
                ]
            case .virtiofs:
                arguments += [
                    "-chardev", "socket,id=fs\(index)," + (inherited?.virtiofs[index].map { "fd=\($0)" } ?? "path=\(files.virtiofsSocket(index))"),
                    "-device", device("vhost-user-fs") + ",chardev=fs\(index),tag=\(volumeTag(index))",
                ]
            }
        }
        return Command(target.qemuSystem, arguments)
    }

    /// passt for every network but none: the guest's frames on `fd` (or on the socket file,
    /// for a command to read), the addresses of QEMU's user network, the `-p` ports on their
    /// host addresses. passt maps the gateway to the host's loopback, since the replies to `-p`
    /// connections and datagrams go there; vmfactory's frame filter lets only those replies
    /// through unless the network is `host-loopback`.
    public func passt(_ files: Files, fd: Int32?, log: String, executable: String = "passt") -> Command? {
        guard options.network.usesPasst else { return nil }
        var arguments = ["--foreground", "--one-off", "--quiet", "--log-file", log]
        arguments += fd.map { ["--fd", String($0)] } ?? ["--socket", files.networkSocket]
        arguments += ["--address", Self.guestAddress, "--netmask", "24", "--gateway", Self.gateway, "--dns-forward", Self.dns, "--no-dhcp-search"]
        if let vmmIdentity = options.vmmIdentity { arguments += ["--runas", "\(vmmIdentity.uid):\(vmmIdentity.gid)"] }
        for port in ports {
            arguments += [port.proto == .tcp ? "--tcp-ports" : "--udp-ports", "\(port.hostAddress)/\(port.hostPort):\(port.guestPort)"]
        }
        return Command(executable, arguments)
    }

    /// virtiofsd for a folder root shared over virtio-fs: the guest's `/`, written in place.
    public func rootVirtiofsd(files: Files, executable: String = "/usr/lib/qemu/virtiofsd") -> Command? {
        guard let folder = root.folder, rootShare == .virtiofs else { return nil }
        return Command(executable, ["--socket-path=\(files.rootSocket)", "-o", "source=\(folder),cache=auto,killpriv_v2,modcaps=-mknod"])
    }

    /// virtfs-proxy-helper for a folder root shared over 9p: chrooted into the folder, serving
    /// QEMU on `fd` (its end of a socket pair), in the foreground.
    public func rootProxyHelper(fd: Int32, executable: String = Self.proxyHelper) -> Command? {
        guard let folder = root.folder, rootShare == .ninep else { return nil }
        return Self.proxyHelper(folder: folder, fd: fd, executable: executable)
    }

    public static let proxyHelper = "/usr/lib/qemu/virtfs-proxy-helper"

    /// virtfs-proxy-helper serving `folder` on `fd`, in the foreground.
    public static func proxyHelper(folder: String, fd: Int32, executable: String = proxyHelper) -> Command {
        Command(executable, ["--nodaemon", "--path", folder, "--fd", String(fd)])
    }

    /// virtiofsd for the virtio-fs volume at `index`: it serves the host folder on a socket
    /// QEMU connects to, and ends when QEMU does.
    public func virtiofsd(_ index: Int, files: Files, executable: String = "/usr/lib/qemu/virtiofsd") -> Command {
        let volume = options.volumes[index]
        // QEMU 7.2's virtiofsd has no read-only mode: a read-only volume is mounted so in the guest.
        // Without CAP_MKNOD it cannot make device nodes for the guest; killpriv_v2 clears
        // setuid and setgid bits on writes, chown and truncation (not on a chmod).
        let options = "source=\(volume.host),cache=auto,killpriv_v2,modcaps=-mknod"
        return Command(executable, ["--socket-path=\(files.virtiofsSocket(index))", "-o", options])
    }
}

/// What a run asks for that its plan takes as it is: the devices, the machine's size, the
/// terminal, the confinement.
public struct RunOptions: Sendable {
    public var volumes: [Volume] = []
    /// Small files an engine gives the container (its /etc/hosts, /etc/resolv.conf,
    /// /etc/hostname): their text goes with the settings, bound over the image's in the guest.
    public var files: [GuestFile] = []
    /// An engine's network namespace for the guest's NIC (the OCI runtime's), instead of
    /// `network`'s passt.
    public var namespaceNetwork: NamespaceNetwork?
    public var tmpfs: [TmpfsMount] = []
    /// The size of /dev/shm (`--shm-size`), 64 MiB as docker's.
    public var shmBytes = 64 << 20
    public var network: RunPlan.Network = .user
    /// Who QEMU runs as when vmfactory is root (nil: as vmfactory's own user).
    public var vmmIdentity: ProcessIdentity?
    public var memoryMiB = 512
    /// `--pids-limit`: the most tasks the command may have in the guest (nil: no limit).
    public var pidsLimit: Int?
    public var cpus = 1
    /// TCG with -icount (deterministic guest time).
    public var icount = false
    public var interactive = false
    public var tty = false
    public var readOnly = false
    public var verbose = false
    /// --keep: the overlay outlives the run.
    public var keep = false

    public init() {}
}

/// A small host file's text for the guest, at `guest` (bound over the image's file).
public struct GuestFile: Sendable, Equatable {
    public var guest: String
    public var content: String
    public var readOnly: Bool

    public init(guest: String, content: String, readOnly: Bool) {
        self.guest = guest
        self.content = content
        self.readOnly = readOnly
    }

    /// The most a file may hold: the settings travel in one frame.
    public static let largest = 16 << 10
}
