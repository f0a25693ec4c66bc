import Foundation
import VMFactoryBoot
import VMFactoryCore
import VMFactoryImage
import VMFactoryLifecycle

/// The image a run boots: its converted disk, its config and its platform.
public struct RunImage: Sendable {
    public var disk: String
    public var config: ImageConfig.Execution
    /// OS/ARCH[/VARIANT], as the image says.
    public var platform: String

    public init(disk: String, config: ImageConfig.Execution, platform: String) {
        self.disk = disk
        self.config = config
        self.platform = platform
    }
}

/// Finds (or converts) an image's disk. The command line supplies it, with its registry
/// options and cache.
public protocol RunImageProvider: Sendable {
    /// The image's disk for `platform`; for nil, the host's platform, or the one platform an
    /// image made for another has.
    func image(_ reference: String, platform: Platform?) async throws -> RunImage
}

/// The kernel and initrd a run boots, and the run protocol the initrd's init speaks.
public struct RunKernel: Sendable {
    public var kernel: String
    public var initrd: String
    public var cmdline: String
    /// From the build's manifest; nil for an initrd made before the run protocol.
    public var runProtocol: Int?
    /// What to do when the versions differ: rebuild, or publish again.
    public var rebuildHint: String

    public init(kernel: String, initrd: String, cmdline: String, runProtocol: Int?, rebuildHint: String) {
        self.kernel = kernel
        self.initrd = initrd
        self.cmdline = cmdline
        self.runProtocol = runProtocol
        self.rebuildHint = rebuildHint
    }
}

/// Finds (or builds, or pulls) the kernel and initrd for a target. The command line supplies
/// it: a recipe's build, or a published kernel image.
public protocol RunKernelProvider: Sendable {
    func kernel(for target: Target) async throws -> RunKernel
}

/// Decides the accelerator a machine runs with.
public protocol RunAcceleratorProvider: Sendable {
    /// The accelerator for `choice`, and a note for the debug log. With `probe` false (the
    /// QEMU command is only printed), `auto` takes what an earlier probe found, never
    /// starting QEMU.
    func accelerator(_ choice: AcceleratorProbe.Choice, machine: QEMUMachine, probe: Bool) async throws -> (QEMUMachine.Accelerator, String?)
}

/// KVM after a probe shows that it works, else TCG; or what was asked for. Without a probe
/// (a command only printed), `auto` takes what an earlier probe found.
public struct ProbedAccelerators: RunAcceleratorProvider {
    public let probe: AcceleratorProbe

    public init(probe: AcceleratorProbe) {
        self.probe = probe
    }

    public func accelerator(_ choice: AcceleratorProbe.Choice, machine: QEMUMachine, probe run: Bool) async throws -> (QEMUMachine.Accelerator, String?) {
        if !run, choice == .auto {
            return (probe.remembered(for: machine.target) == true ? .kvm : .tcg, nil)
        }
        return try await probe.resolve(choice, machine: machine, marker: ConsoleMarkers.ready)
    }
}

/// What a run asks for: the image, the process, the devices, the machine; as the command line
/// gave them, parsed.
public struct RunRequest: Sendable {
    /// The image's reference; with `rootFolder`, only a name for messages.
    public var image: String
    /// `--rootfs`: the root is this host folder, over virtio-fs and written in place, instead
    /// of an image's disk; the command comes from the request alone.
    public var rootFolder: String?
    /// `--platform`, or the platform of `--target`.
    public var platform: Platform?
    public var process = ProcessRequest()
    /// What the plan takes as it is.
    public var options = RunOptions()
    /// `-p`, not yet listening.
    public var ports: [PortForward] = []
    public var accelerator: AcceleratorProbe.Choice = .auto
    /// The guest's host name (nil: the run's id).
    public var hostname: String?
    /// The host terminal's size, for -t.
    public var windowSize: (rows: Int, cols: Int)?
    /// `--print-qemu`: the plan is printed, not run (no ports are taken, no probe runs).
    public var printOnly = false
    /// Whether vmfactory runs as root (virtio-fs needs it).
    public var root = geteuid() == 0

    public init(image: String) {
        self.image = image
    }
}

/// Everything before the boot, in VMFactoryRun: the request checked, the image and the kernel
/// from their providers, the protocol's versions compared, the process combined, the
/// accelerator decided, the plan made. What is slow (a conversion, a build, a pull) is the
/// providers'.
public struct RunPreparer: Sendable {
    public var images: any RunImageProvider
    public var kernels: any RunKernelProvider
    public var accelerators: any RunAcceleratorProvider
    public var console: Console

    public init(images: any RunImageProvider, kernels: any RunKernelProvider, accelerators: any RunAcceleratorProvider, console: Console) {
        self.images = images
        self.kernels = kernels
        self.accelerators = accelerators
        self.console = console
    }

    /// The plan for `request`, to run as `id`; the `-p` ports take their host ports on `relay`
    /// (unless only printed).
    public func plan(_ request: RunRequest, id: String, relay: LoopbackRelay, hostEnvironment: [String: String]) async throws -> RunPlan {
        try check(request)
        let ports = try request.ports.map { request.printOnly ? $0 : try $0.reserved(relay: relay) }
        let config: ImageConfig.Execution
        let root: RunPlan.Root
        let target: Target
        if let folder = request.rootFolder {
            config = ImageConfig.Execution()
            root = .folder(folder)
            target = try Self.target(forFolder: folder, request: request, hostEnvironment: hostEnvironment)
        } else {
            let image = try await images.image(request.image, platform: request.platform)
            config = image.config
            root = .disk(image.disk)
            target = try Self.target(for: image.platform)
        }
        let kernel = try await kernels.kernel(for: target)
        try Self.checkProtocol(kernel)
        let process = try ContainerProcess.combine(image: config, request: request.process, hostEnvironment: hostEnvironment)

        var plan = RunPlan(
            target: target, kernel: kernel.kernel, initrd: kernel.initrd, cmdline: kernel.cmdline, root: root, process: process,
            hostname: request.hostname ?? id
        )
        plan.options = request.options
        plan.ports = ports
        if plan.rootShare == .ninep {
            // virtio-fs speaks FUSE in the host's byte order: a guest of the other gets its
            // virtio-fs folders over 9p, served as virtio-fs would be (as root, for an
            // unprivileged QEMU) by virtfs-proxy-helper.
            for index in plan.options.volumes.indices where plan.options.volumes[index].kind == .virtiofs {
                plan.options.volumes[index].kind = .ninepProxy
                console.debug("run: the volume \(plan.options.volumes[index].host) reaches the \(target) guest over 9p through virtfs-proxy-helper")
            }
        }
        if request.options.tty { plan.windowSize = request.windowSize ?? (24, 80) }
        if request.options.icount {
            plan.accelerator = .tcg
        } else {
            let machine = QEMUMachine(target: target, kernel: kernel.kernel, initrd: kernel.initrd, cmdline: kernel.cmdline)
            let (accelerator, note) = try await accelerators.accelerator(request.accelerator, machine: machine, probe: !request.printOnly)
            plan.accelerator = accelerator
            if let note { console.debug(note) }
        }
        // KVM is /dev/kvm's group's: QEMU's user joins it for that alone.
        var kvm = stat()
        if plan.accelerator == .kvm, plan.vmmIdentity != nil, stat("/dev/kvm", &kvm) == 0, kvm.st_gid != 0, kvm.st_mode & 0o006 != 0o006 {
            plan.vmmIdentity?.groups = [kvm.st_gid]
        }
        return plan
    }

    /// What can be said of the request before anything is converted, built or started.
    func check(_ request: RunRequest) throws {
        if let folder = request.rootFolder {
            guard FileStore.isDirectory(folder) else {
                throw VMFactoryError(.notFound, "--rootfs \(folder) is not a folder", hint: "give the folder that holds the container's root (its bin, etc, usr)")
            }
            guard request.process.command.first != nil || request.process.entrypoint?.isEmpty == false else {
                throw VMFactoryError(.invalidArgument, "a --rootfs run has no image config to take a command from", hint: "give the command after the folder")
            }
            if !request.root, !request.printOnly {
                throw VMFactoryError(.invalidArgument, "--rootfs needs root: the folder reaches the guest through QEMU 7.2's virtiofsd, which runs as root", hint: "run as root, or make an image of the folder and run that")
            }
        }
        if request.options.volumes.contains(where: { $0.kind == .virtiofs || $0.kind == .ninepProxy }), !request.root, !request.printOnly {
            throw VMFactoryError(.invalidArgument, "virtio-fs volumes need root: QEMU 7.2's virtiofsd runs as root", hint: "share the folder over 9p instead (-v HOST:GUEST), or run as root")
        }
        for volume in request.options.volumes where volume.kind == .virtiofs && !volume.readOnly && !request.printOnly {
            console.warning(
                "the virtio-fs volume \(volume.host) is writable by the guest as root: QEMU 7.2's virtiofsd keeps the owners and a chmod's setuid bits the guest sets; share it over 9p (-v \(volume.host):\(volume.guest)) for a guest you do not trust"
            )
        }
        var mountPoints = Set<String>()
        for point in request.options.volumes.map(\.guest) + request.options.tmpfs.map(\.guest) where !mountPoints.insert(point).inserted {
            throw VMFactoryError(.invalidArgument, "\(point) is given more than one volume or tmpfs", hint: "mount one thing at each path")
        }
    }

    /// The target whose kernel runs an image of `platform`.
    static func target(for platform: String) throws -> Target {
        guard let target = Target.allCases.first(where: { Platform.of($0).matches(Platform(parsing: platform) ?? .host) }) else {
            throw VMFactoryError(.invalidArgument, "the image is for \(platform), a platform vmfactory has no kernel for", hint: "run an image for linux/amd64 or linux/s390x")
        }
        return target
    }

    /// The target for a folder root: the one asked for, else that of the program the command
    /// runs (its ELF header, or its `#!` interpreter's), else the host's.
    static func target(forFolder folder: String, request: RunRequest, hostEnvironment: [String: String]) throws -> Target {
        if let platform = request.platform { return try target(for: platform.description) }
        let program = request.process.entrypoint.flatMap { $0.isEmpty ? nil : $0 } ?? request.process.command.first ?? ""
        let environment = request.process.environment.filter { $0.contains("=") }
        return RootFolder(folder).target(ofProgram: program, environment: environment) ?? Target(rawValue: Target.hostMachine) ?? .x86_64
    }

    /// The initrd's init must speak this vmfactory's run protocol: checked before the boot,
    /// from the build's manifest (the init checks it again at its hello).
    static func checkProtocol(_ kernel: RunKernel) throws {
        guard kernel.runProtocol != Int(RunProtocol.version) else { return }
        let shown = FileStore.displayPath(kernel.initrd)
        throw VMFactoryError(
            .invalidArgument,
            kernel.runProtocol.map { "the initrd \(shown) speaks run protocol version \($0), and this vmfactory speaks version \(RunProtocol.version)" }
                ?? "the initrd \(shown) was made before the run protocol (version 0), and this vmfactory speaks version \(RunProtocol.version)",
            hint: kernel.rebuildHint
        )
    }
}
