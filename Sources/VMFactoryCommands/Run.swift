import ArgumentParser
import Foundation
import VMFactoryBoot
import VMFactoryCore
import VMFactoryExec
import VMFactoryImage
import VMFactoryKernel
import VMFactoryPublish
import VMFactoryLifecycle
import VMFactoryRun

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a container image in a microVM, as docker run runs it in a container.",
        usage: "vmfactory run [OPTIONS] IMAGE [COMMAND [ARG...]]",
        discussion: """
            IMAGE is any image `vmfactory rootfs` takes (oci:DIR, oci-archive:FILE, docker-archive:FILE, \
            docker://…, tar:FILE with --config); it is converted on first use and cached. The guest boots the \
            container recipe's kernel (built on first use), mounts the image's disk under an overlay of the run's \
            own (the cached disk is never written), and runs the image's Entrypoint and Cmd, or COMMAND, as the \
            image's user in its working directory with its environment, as docker does.

            The command's stdout and stderr arrive here byte for byte, each on its own stream of the run's channel; the kernel \
            console goes to the run's log (--console shows it). The exit status is the command's (0-255, 128+N \
            for a signal), 124 after --timeout, 125 when vmfactory or the guest failed before the command ran, \
            126 when the command cannot be invoked and 127 when it is not found.

            Ports published with -p listen on the loopback (127.0.0.1 and [::1]) unless an address is given: the \
            guest may run untrusted code. Ctrl-C or SIGTERM sends the command its stop signal (the image's StopSignal, else SIGTERM), \
            then ends the VM after --stop-timeout; a second one ends it at once.

            With -d the run goes on in the background and its id is printed once the command has started: \
            `vmfactory exec`, `cp`, `logs`, `stop`, `kill`, `wait`, `inspect` and `rm` take it (or its --name) from there.
            """
    )

    @OptionGroup var settings: RunSettings

    @Option(name: [.customShort("e"), .long], help: "NAME=VALUE, or NAME to pass vmfactory's own value (repeatable).")
    var env: [String] = []

    @Option(help: "A file of NAME=VALUE lines (# comments), read before -e (repeatable).")
    var envFile: [String] = []

    @Option(name: [.customShort("w"), .long], help: "The working directory in the image (default: the image's, else /).")
    var workdir: String?

    @Option(name: [.customShort("u"), .long], help: "USER[:GROUP], names from the image's /etc/passwd and /etc/group, or numbers.")
    var user: String?

    @Option(help: "The program to run instead of the image's Entrypoint (the image's Cmd is dropped too).")
    var entrypoint: String?

    @Option(help: "The guest's host name (default: the run's id).")
    var hostname: String?

    @Option(name: [.customShort("v"), .customLong("volume")], help: "HOST:GUEST[:ro][,virtiofs]: a host folder in the guest, over 9p or virtio-fs (repeatable).")
    var volumes: [String] = []

    @Option(name: .customLong("mount"), help: "type=9p|bind|virtiofs,source=HOST,target=GUEST[,readonly] (repeatable).")
    var mounts: [String] = []

    @Option(help: "PATH[:OPTIONS]: a tmpfs at PATH in the guest, as docker mounts one (rw,noexec,nosuid,nodev unless OPTIONS say otherwise; size=, mode=, uid=, gid= too) (repeatable).")
    var tmpfs: [String] = []

    @Option(name: [.customShort("p"), .customLong("publish")], help: "[IP:][HOST:]GUEST[/tcp|/udp]: a host port forwarded to the guest; on 127.0.0.1 and [::1] unless IP is given (repeatable).")
    var publish: [String] = []

    @Option(help: "user (the default: the outside world through passt, never the host's loopback), restricted (only the -p ports), host-loopback (user, and the host's loopback at 10.0.2.2) or none (no network device).")
    var network: RunPlan.Network = .user

    @Option(help: "USER[:GROUP] that QEMU runs as when vmfactory runs as root (default: nobody:nogroup); one per run keeps runs apart.")
    var vmmUser: String?

    @Option(name: [.customShort("m"), .long], help: "Guest memory: 512m (the default), 2g, bytes.")
    var memory = "512m"

    @Option(help: "At most this many processes and threads for the command in the guest, as docker's --pids-limit (0 or -1: no limit).")
    var pidsLimit: Int?

    @Option(help: "The size of /dev/shm, as docker's --shm-size: 64m (the default), 1g, bytes.")
    var shmSize = "64m"

    @Option(help: "Guest vCPUs; a fraction rounds up (1.5 is 2).")
    var cpus: Double = 1

    @Flag(name: [.customShort("i"), .long], help: "Stream stdin to the command; its end is the command's end of file.")
    var interactive = false

    @Flag(name: [.customShort("t"), .long], help: "Give the command a pseudo-terminal (the host terminal goes into raw mode).")
    var tty = false

    @Flag(name: .customLong("rm"), help: "Remove the run's writable layer at the end (the default without -d; with -d, its record and log go too).")
    var remove = false

    @Flag(name: [.customShort("d"), .long], help: "Run in the background: print the run's id once the command has started; `vmfactory logs`, `exec`, `stop`, `wait` and `rm` take it from there.")
    var detach = false

    @Option(help: "A name for the run, for exec, logs, stop and the rest (unique among the runs).")
    var name: String?

    /// Set when vmfactory starts itself as a detached run's supervisor: the descriptor to say
    /// "started" on, and the run's id.
    @Option(help: .hidden)
    var supervisorReport: Int32?

    @Option(help: .hidden)
    var runID: String?

    @Flag(help: "Keep the run's folder (its writable layer, console log and QEMU command) and print its path.")
    var keep = false

    @Flag(help: "IMAGE is a folder that holds the container's root, as podman's --rootfs: shared with the guest over virtio-fs (root only) and written in place; COMMAND is needed.")
    var rootfs = false

    @Flag(help: "Mount the image's root read-only, as docker does: only volumes, --tmpfs mounts and /dev/shm stay writable.")
    var readOnly = false

    @Option(help: "End the VM after this long (exit 124): 30s, 2m.")
    var timeout: DurationArgument?

    @Option(help: "How long a stopped command may take to exit before the VM ends.")
    var stopTimeout: DurationArgument = DurationArgument(argument: "10s")!

    @Option(help: "A published kernel and initrd to run with (oci:DIR[:TAG], oci-archive:FILE[:TAG], docker://HOST/REPO:TAG), pulled and verified once, instead of the recipe's build.")
    var kernelImage: String?

    @Option(help: "The kernel recipe (default: container).")
    var recipe = "container"

    @Option(help: "x86_64 or s390x (default: the image's platform; the host's for a multi-platform image).")
    var target: SingleTarget?

    @Option(help: "The image's platform in an index, such as linux/amd64 or linux/s390x.")
    var platform: String?

    @Option(help: "auto (KVM after a probe shows it works, else TCG), kvm or tcg.")
    var accel: AcceleratorProbe.Choice = .auto

    @Flag(help: "TCG with -icount shift=0,sleep=off (deterministic guest time, for measurements).")
    var icount = false

    @Flag(help: "Boot the kernel from its first instruction instead of starting from the template of this machine (the first run of a machine makes it; `vmfactory templates` lists them).")
    var noSnapshot = false

    @Option(help: "Where the templates are kept (default: templates in the cache), for runs with caches of their own that share their machines' templates.")
    var templateDir: String?

    @Flag(help: "Show the kernel console on stderr too.")
    var console = false

    @Flag(help: "Print the QEMU command instead of running it.")
    var printQemu = false

    @Option(help: "USER:PASSWORD for a docker:// registry.")
    var creds: String?

    @Option(name: .customLong("tls-verify"), help: "false for a registry without TLS.")
    var tlsVerify: Bool = true

    @Argument(help: "The image.")
    var image: String

    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments (default: the image's Cmd).")
    var command: [String] = []

    func validate() throws {
        if remove && keep { throw ValidationError("--rm and --keep cannot be used together") }
        if detach && (interactive || tty) { throw ValidationError("-d runs in the background without a terminal or stdin; use `vmfactory exec -it` into it instead of -i or -t") }
        if detach && printQemu { throw ValidationError("--print-qemu prints the command; drop -d") }
        if let name, !RunRegistry.isValidName(name) { throw ValidationError("--name \(name) is not a valid name: letters, digits, '_', '.' and '-', starting with a letter or digit") }
        if !(cpus > 0 && cpus <= 64) { throw ValidationError("--cpus takes a number above 0, at most 64") }
        if network == .none, !publish.isEmpty { throw ValidationError("-p needs a network; drop --network none") }
        if let platform, Platform(parsing: platform) == nil { throw ValidationError("--platform wants OS/ARCH[/VARIANT], such as linux/amd64") }
        if icount, accel == .kvm { throw ValidationError("--icount needs TCG; drop --accel kvm") }
        if let hostname, !HostName.isValid(hostname) {
            throw ValidationError("--hostname \(hostname) is not a host name (letters, digits, '-' and '.', at most \(HostName.maximumLength))")
        }
        _ = try MemorySize.mebibytes(memory)
        _ = try MemorySize.bytes(shmSize, flag: "--shm-size")
    }

    func run() async throws {
        let context = CommandContext.current
        if detach, supervisorReport == nil {
            do {
                return try await startDetached(context)
            } catch {
                throw Self.exitCode(for: error, context)
            }
        }
        if detach { return try await superviseDetached(context) }
        let console = settings.console(context)
        // One set of handlers from the start, VMFactoryRun's: a signal while the image is
        // converted or the kernel built cancels that work (exit 130); one while the VM runs is
        // an event of the session's state machine.
        let signals = context.handlesSignals ? SignalForwarding() : nil
        defer { signals?.cancel() }
        do {
            guard let session = try await RunSession.prepare(signals: signals, stderr: context.stderr, { try await prepare(context, console) }) else { return }
            if let name { try session.registry.reserve(name: name, id: session.id) }
            defer { if let name { session.registry.release(name: name, id: session.id) } }
            if context.handlesSignals { signal(SIGPIPE, SIG_IGN) }
            let outcome = try await session.run()
            if let message = outcome.message { context.stderr.writeLine("vmfactory: " + message) }
            if let kept = outcome.keptFolder { context.stderr.writeLine("vmfactory: kept the run's folder: \(kept)") }
            if outcome.exitCode != 0 { throw ExitCode(outcome.exitCode) }
        } catch {
            throw Self.exitCode(for: error, context)
        }
    }

    /// A run's failure as its exit status: the command's own status as it is; vmfactory's
    /// failures said on stderr, 130 when interrupted, else 125.
    static func exitCode(for error: any Error, _ context: CommandContext) -> ExitCode {
        if let exit = error as? ExitCode { return exit }
        let failure = VMFactoryError(error)
        context.stderr.writeLine("vmfactory: error: " + failure.description)
        return ExitCode(failure.code == .interrupted ? 130 : 125)
    }

    /// How skopeo reaches a registry, for the image and for --kernel-image.
    var registryOptions: RegistryOptions {
        var registry = RegistryOptions()
        registry.credentials = creds
        registry.tlsVerify = tlsVerify
        return registry
    }

    /// Everything before the boot: the request from the options, the plan from VMFactoryRun's
    /// preparer with this command's providers (the image converted, the kernel found, built or
    /// pulled, the accelerator probed), the session. nil when --print-qemu printed the plan.
    func prepare(_ context: CommandContext, _ console: Console) async throws -> RunSession? {
        let begun = ContinuousClock.now
        defer { console.debug(String(format: "run: the image, the kernel and the plan took %.3f s", (ContinuousClock.now - begun).seconds)) }
        let factory = try settings.makeFactory(context, console: console)
        let cache = factory.workspace.cacheDirectory
        let request = try self.request(context)
        let relay = LoopbackRelay()
        let preparer = RunPreparer(
            images: ConvertedImages(context: context, console: console, cacheDirectory: cache, registry: registryOptions),
            kernels: RecipeKernels(factory: factory, recipe: try factory.recipes.load(recipe), kernelImage: kernelImage, skopeo: Skopeo(registry: registryOptions, environment: context.environment, runner: context.runner)),
            accelerators: ProbedAccelerators(probe: Booter(factory).acceleratorProbe),
            console: console
        )
        let folders = RunFolders(cacheDirectory: cache)
        let id = runID ?? RunFolders.newID()
        let plan = try await preparer.plan(request, id: id, relay: relay, hostEnvironment: context.environment)
        if printQemu {
            let files = RunPlan.Files(overlay: folders.root + "/\(id)/disk.qcow2", sockets: folders.root + "/\(id)/sockets")
            context.stdout.writeLine(plan.qemu(files).description)
            return nil
        }
        for port in plan.ports { console.info("run: port \(port.description)") }
        var session = RunSession(
            id: id, plan: plan, folders: folders, console: console,
            baseEnvironment: Command.baseEnvironment(from: context.environment), stdout: context.stdout, stderr: context.stderr
        )
        session.timeout = timeout?.duration
        session.stopGrace = stopTimeout.duration
        session.showConsole = self.console
        session.keep = keep
        if !noSnapshot {
            session.templates = templateDir.map { RunTemplates(directory: FileStore.absolute($0, relativeTo: context.currentDirectory)) } ?? RunTemplates(cacheDirectory: cache)
        }
        session.relay = relay.isEmpty ? nil : relay
        session.record = RunRecord(
            id: id, name: name, image: image, command: plan.process.argv, target: plan.target.rawValue, created: Date(), status: .created,
            ports: plan.ports.map(\.description), pid: 0, controlSocket: "", detached: detach, user: plan.process.user, workdir: plan.process.workdir,
            environment: []
        )
        return session
    }

    /// The run's request, from the options.
    func request(_ context: CommandContext) throws -> RunRequest {
        let cwd = context.currentDirectory
        var request = RunRequest(image: image)
        if rootfs { request.rootFolder = FileStore.absolute(image, relativeTo: cwd) }
        request.platform = platform.flatMap(Platform.init(parsing:)) ?? target.map { Platform.of($0.target) }
        request.process.command = command
        request.process.entrypoint = entrypoint
        request.process.environment = env
        request.process.environmentFiles = try envFile.map { name in
            let path = FileStore.absolute(name, relativeTo: cwd)
            guard let text = try? FileStore.readText(path) else {
                throw VMFactoryError(.notFound, "--env-file \(name): cannot read \(path)", hint: "check the path")
            }
            return (name, text)
        }
        request.process.user = user
        request.process.workdir = workdir
        request.options.volumes = try volumes.map { try Volume.parse(volume: $0, currentDirectory: cwd) } + mounts.map { try Volume.parse(mount: $0, currentDirectory: cwd) }
        request.options.tmpfs = try tmpfs.map { try TmpfsMount.parse($0) }
        request.ports = try publish.map { try PortForward.parse($0) }
        request.options.network = network
        request.options.vmmIdentity = try Self.vmmIdentity(asked: vmmUser)
        request.options.memoryMiB = try MemorySize.mebibytes(memory)
        request.options.shmBytes = try MemorySize.bytes(shmSize, flag: "--shm-size")
        if let pidsLimit, pidsLimit > Self.largestPidsLimit {
            throw ValidationError("--pids-limit \(pidsLimit) is more than Linux allows (\(Self.largestPidsLimit)); give a smaller number, or 0 for no limit")
        }
        request.options.pidsLimit = pidsLimit.flatMap { $0 > 0 ? $0 : nil }
        request.options.cpus = Int(cpus.rounded(.up))
        request.options.interactive = interactive
        request.options.tty = tty
        request.options.readOnly = readOnly
        request.options.verbose = settings.verbose
        request.options.keep = keep
        request.options.icount = icount
        request.accelerator = accel
        request.hostname = hostname
        if tty { request.windowSize = RawTerminal.size(of: STDIN_FILENO) }
        request.printOnly = printQemu
        return request
    }

    /// PID_MAX_LIMIT on 64-bit Linux: the most pids.max takes.
    static let largestPidsLimit = 4_194_304

    /// Who QEMU runs as when vmfactory is root (QEMU is then never root): the user asked for,
    /// else nobody:nogroup. Without root, QEMU runs as vmfactory's user.
    static func vmmIdentity(asked: String?) throws -> ProcessIdentity? {
        guard geteuid() == 0 else {
            if asked != nil { throw ValidationError("--vmm-user needs vmfactory to run as root: otherwise QEMU runs as you") }
            return nil
        }
        if let asked { return try ProcessIdentity.parse(asked) }
        // Not sudo's user: a QEMU the guest took over would hold that user's files.
        return .nobody
    }
}

/// `run`'s own spelling of the workspace options: long names only, since -v, -q and the like
/// are docker's in `run`.
struct RunSettings: ParsableArguments, WorkspaceSettings {
    @Option(help: "Cache for images, disks, kernels' sources and runs (default: $XDG_CACHE_HOME/vmfactory or ~/.cache/vmfactory).")
    var cacheDir: String?

    @Option(help: "Folder that holds outputs/<recipe>/<target>/ (default: outputs/ of the vmfactory checkout).")
    var outputDir: String?

    @Option(name: .customLong("source-dir"), help: "Folder searched for source files by sha256, for a first kernel build (repeatable).")
    var sourceDirs: [String] = []

    @Flag(help: "Never ask apt or the network for sources.")
    var offline = false

    @Flag(help: "Print more detail on stderr (and the init's notes in the console log).")
    var verbose = false

    @Flag(help: "Print only warnings and errors.")
    var quiet = false
}

extension RunPlan.Network: ExpressibleByArgument {}
