import CLinux
import Foundation
import Synchronization
import VMFactoryBoot
import VMFactoryCore
import VMFactoryKernel
import VMFactoryLifecycle
import VMFactoryRun

/// The container's pid: started by `create` in a session of its own, with the container's
/// stdio (or its terminal). It boots the VM, says "created" to `create` once the init waits for
/// `start`, relays the process's stdio, keeps the container's state current, and exits with the
/// container's status. QEMU and its helpers cannot outlive it.
struct Supervisor {
    let runtime: Runtime

    var line: RuntimeCommandLine { runtime.line }
    var log: RuntimeLog { runtime.log }

    func run() async -> Int32 {
        signal(SIGPIPE, SIG_IGN)
        signal(SIGHUP, SIG_IGN)
        let report = ReportPipe(fd: Int32(line.flag("report-fd") ?? "") ?? -1)
        do {
            return try await supervise(report.say)
        } catch {
            let failure = VMFactoryError(error)
            let text = failure.message + (failure.hint.map { " (\($0))" } ?? "")
            if !report.hasSaid {
                report.say("error: " + text)
            } else {
                log.error(text)
                FileHandle.standardError.write(Data(("vmfactory-runtime: " + text + "\n").utf8))
            }
            return failure.code == .interrupted ? 130 : 125
        }
    }

    private func supervise(_ say: @escaping @Sendable (String) -> Void) async throws -> Int32 {
        let id = try line.containerID()
        let bundle = line.flag("bundle") ?? "."
        let terminal = line.isSet("terminal")
        if terminal {
            // The terminal is the supervisor's controlling one: conmon's resizes reach it as SIGWINCH.
            _ = ioctl(STDIN_FILENO, UInt(TIOCSCTTY), 0)
        }
        let configuration = try runtime.configuration
        let bundleRun = try BundleRun(bundle: bundle, log: log)
        let bundleRequest = try bundleRun.request(configuration: configuration, interactive: ReportPipe.stdinIsStream || terminal)
        var request = bundleRequest.run
        request.options.tty = request.options.tty && terminal
        if request.options.tty { request.windowSize = RawTerminal.size(of: STDIN_FILENO) }
        request.options.vmmIdentity = geteuid() == 0 ? try (configuration.vmmUser.map(ProcessIdentity.parse) ?? .nobody) : nil
        let runner = LocalProcessRunner(hostEnvironment: runtime.environment)
        if let path = bundleRequest.networkNamespace {
            if let network = try await NamespaceNetwork.inspect(path, runner: runner) {
                request.options.namespaceNetwork = network
                log.debug("network namespace \(path): \(network.interface) \(network.address)/\(network.prefix) via \(network.gateway ?? "no gateway"), MAC \(network.mac), MTU \(network.mtu)")
            } else {
                log.debug("network namespace \(path): no interface with an IPv4 address; the VM has no network device")
            }
        }

        let console = Console(verbosity: line.debug ? .verbose : .quiet, output: .sink { data in log.debug(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .newlines)) })
        let runDirectory = configuration.runDirectory ?? "/run/vmfactory-runtime"
        let library = try Library.locate(environment: runtime.environment, executablePath: runtime.executable, currentDirectory: FileManager.default.currentDirectoryPath)
        let workspace = Workspace(
            library: library, cacheDirectory: runDirectory, outputDirectory: configuration.outputDirectory, offline: true,
            environment: runtime.environment, currentDirectory: FileManager.default.currentDirectoryPath
        )
        let factory = Factory(workspace: workspace, runner: runner, console: console)
        let recipe = try factory.recipes.load(configuration.recipe ?? "container")
        let kernelImage = bundleRun.config.annotations?[BundleRun.kernelAnnotation] ?? configuration.kernelImage
        let preparer = RunPreparer(
            images: NoImages(), kernels: BuiltKernels(factory: factory, recipe: recipe, kernelImage: kernelImage),
            accelerators: ProbedAccelerators(probe: Booter(factory).acceleratorProbe), console: console
        )
        let folders = RunFolders(cacheDirectory: runDirectory)
        let runID = RunFolders.newID()
        let plan = try await preparer.plan(request, id: runID, relay: LoopbackRelay(), hostEnvironment: [:])
        log.debug("container \(id): \(plan.target) VM, \(plan.memoryMiB) MiB, \(plan.cpus) vCPU, root \(bundleRun.root) over \(plan.rootShare.rawValue), run \(runID)")

        let root = line.root
        // The container's pid: the anchor create started this supervisor under.
        let pid = line.isSet("anchored") ? getppid() : getpid()
        let state = Mutex(ContainerState(
            id: id, bundle: bundle, pid: pid, pidStart: ContainerState.processStat(pid)?.start ?? 0, runID: runID, status: .creating,
            created: Date(), annotations: bundleRun.config.annotations ?? [:]
        ))
        @Sendable func mark(_ status: ContainerState.Status) {
            state.withLock { state in
                state.status = status
                do { try state.write(root: root) } catch { log.error("cannot write container \(state.id)'s state: \(error)") }
            }
        }
        mark(.creating)

        var session = RunSession(
            id: runID, plan: plan, folders: folders, console: console, baseEnvironment: Command.baseEnvironment(from: runtime.environment),
            stdout: .standardOutput, stderr: .standardError
        )
        session.stopGrace = .seconds(10)
        session.waitForStart = true
        session.onBooted = {
            mark(.created)
            say("created\n")
        }
        session.onStarted = { mark(.running) }
        session.record = RunRecord(
            id: runID, name: nil, image: bundle, command: plan.process.argv, target: plan.target.rawValue, created: Date(), status: .created,
            ports: [], pid: 0, controlSocket: "", detached: false, user: plan.process.user, workdir: plan.process.workdir, environment: []
        )
        let signals = SignalForwarding(signals: [SIGINT, SIGTERM, SIGWINCH])
        defer { signals.cancel() }
        session.signals = signals
        let outcome: RunOutcome
        do {
            outcome = try await session.run()
        } catch {
            mark(.stopped)
            throw error
        }
        mark(.stopped)
        if let message = outcome.message {
            // The guest's own messages (exec: "x": executable file not found in $PATH) as
            // docker shows them; vmfactory's with its name.
            let own = outcome.exitCode == 126 || outcome.exitCode == 127
            FileHandle.standardError.write(Data(((own ? "" : "vmfactory-runtime: ") + message + "\n").utf8))
            log.debug("container \(id) ended with \(outcome.exitCode): \(message)")
        }
        return outcome.exitCode
    }
}
