import CLinux
import Foundation
import Synchronization
import VMFactoryBoot
import VMFactoryCore
import VMFactoryKernel
import VMFactoryLifecycle
import VMFactoryRun

/// vmfactory-runtime: an OCI runtime with runc's command line whose containers are microVMs.
/// The container's pid is its supervisor, a descendant of `create` that owns QEMU and exits
/// with the container's status; the VM boots at `create` and the process starts at `start`.
public struct Runtime: Sendable {
    public var line: RuntimeCommandLine
    public var log: RuntimeLog
    public var environment: [String: String]
    public var executable: String

    public static let version = "0.1.0"

    public init(arguments: [String], environment: [String: String], executable: String) throws {
        line = try RuntimeCommandLine.parse(arguments)
        log = RuntimeLog(path: line.log, format: line.logFormat, debug: line.debug)
        // podman calls kill, state and delete with XDG_RUNTIME_DIR alone: the tools the
        // runtime starts (QEMU, virtiofsd, ip, tc, nsenter) are found all the same.
        var environment = environment
        if environment["PATH"]?.isEmpty ?? true { environment["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" }
        self.environment = environment
        self.executable = executable
    }

    /// Runs the command; its exit status.
    public static func main(arguments: [String], environment: [String: String], executable: String) async -> Int32 {
        let runtime: Runtime
        do {
            runtime = try Runtime(arguments: arguments, environment: environment, executable: executable)
        } catch {
            FileHandle.standardError.write(Data(("vmfactory-runtime: error: " + VMFactoryError(error).description + "\n").utf8))
            return 2
        }
        do {
            return try await runtime.run()
        } catch {
            let failure = VMFactoryError(error)
            runtime.log.error(failure.message + (failure.hint.map { " (\($0))" } ?? ""))
            return 1
        }
    }

    func run() async throws -> Int32 {
        if !line.ignored.isEmpty { log.debug("flags taken and not used: \(line.ignored.joined(separator: " "))") }
        if line.systemdCgroup { log.debug("--systemd-cgroup: the container's processes are in the VM; its supervisor stays in the caller's cgroup") }
        switch line.command {
        case "--version":
            print("vmfactory-runtime version \(Self.version)\nspec: 1.0.2")
            return 0
        case "--help", "help":
            print(Self.usage)
            return 0
        case "create": return try await create()
        case "start": return try start()
        case "state": return try state()
        case "kill": return try kill()
        case "delete": return try delete()
        case "features": return features()
        case "exec": return try await exec()
        case "pause": return try pause(true)
        case "resume": return try pause(false)
        case "ps": return try ps()
        case "exec-relay": return await execRelay()
        case "supervise": return await Supervisor(runtime: self).run()
        default:
            throw VMFactoryError(.invalidArgument, "unknown command \(line.command)", hint: "vmfactory-runtime --help lists the commands")
        }
    }

    static let usage = """
        usage: vmfactory-runtime [--root DIR] [--log FILE] [--log-format text|json] [--debug] [--systemd-cgroup] [--config FILE] COMMAND

        An OCI runtime whose containers are microVMs (runc's command line).

        commands:
          create --bundle DIR --pid-file FILE [--console-socket SOCK] ID   boot the container's VM; its process waits for start
          start ID                       start the container's process
          state ID                       the container's OCI state (JSON)
          kill ID [SIGNAL]               a signal to the container's process (a created one's VM ends)
          delete [--force] ID            the container's state; --force ends a running one
          exec --process FILE [--detach] [--pid-file FILE] [--tty --console-socket SOCK] ID
                                         a process in the container's VM
          pause ID, resume ID            stop and continue the VM's vCPUs (QEMU's stop and cont)
          ps [--format table|json] ID    the host's processes of the container: its supervisor, QEMU and helpers
          features                       what this runtime supports (JSON)
        """

    var configuration: RuntimeConfiguration {
        get throws { try RuntimeConfiguration.load(explicit: line.config, root: line.root) }
    }

    /// The runs' folders (their sockets' paths must stay short).
    func runFolders(_ configuration: RuntimeConfiguration) -> RunFolders {
        RunFolders(cacheDirectory: configuration.runDirectory ?? "/run/vmfactory-runtime")
    }

    // MARK: create

    func create() async throws -> Int32 {
        let id = try line.containerID()
        let bundle = FileStore.absolute(line.flag("bundle", "b") ?? ".", relativeTo: FileManager.default.currentDirectoryPath)
        let folder = ContainerState.folder(root: line.root, id: id)
        if FileStore.exists(folder + "/state.json") {
            throw VMFactoryError(.invalidArgument, "container \(id) exists", hint: "delete it first, or give another id")
        }
        // The bundle is read here, so that what is wrong with it is said by create.
        let bundleRun = try BundleRun(bundle: bundle, log: log)
        _ = try bundleRun.request(configuration: try configuration, interactive: false)
        try FileStore.createDirectory(folder)
        var created = false
        defer { if !created { try? FileManager.default.removeItem(atPath: folder) } }

        // A session of its own and no parent-death signal: the supervisor outlives create,
        // adopted by conmon or the shim (child subreapers), which wait on it.
        // The container's pid is an anchor whose mount namespace has the container's root as
        // its own (engines look into a running container through it: podman cp); the
        // supervisor is its child, and its status the anchor's.
        let (supervisor, said) = try await spawnHelper(
            ["supervise", "--bundle", bundle, "--anchored"], id: id, terminalSocket: line.flag("console-socket"), parentDeathSignal: 0,
            anchorRoot: bundleRun.root
        )
        guard said.hasPrefix("created") else {
            _ = await supervisor.wait()
            let message = said.hasPrefix("error: ") ? String(said.dropFirst(7)).trimmingCharacters(in: .newlines) : "the container's VM did not boot (its supervisor ended)"
            throw VMFactoryError(.processFailed, message)
        }
        if let pidFile = line.flag("pid-file") {
            try FileStore.writeAtomically("\(supervisor.pid)", to: FileStore.absolute(pidFile, relativeTo: FileManager.default.currentDirectoryPath))
        }
        created = true
        log.debug("created \(id): supervisor \(supervisor.pid)")
        return 0
    }

    /// Starts this runtime again, as a container's supervisor or an exec's relay, in a session
    /// of its own: with the caller's stdio (conmon's or the shim's pipes), or a new terminal
    /// whose master goes to `terminalSocket` first. Returns it, and what it said on its report
    /// pipe before closing it ("created", "started", "error: …"; nothing when it ended first).
    func spawnHelper(_ command: [String], id: String, terminalSocket: String?, parentDeathSignal: Int32, anchorRoot: String? = nil) async throws -> (ChildProcess, String) {
        var report: [Int32] = [-1, -1]
        guard vmf_pipe_cloexec(&report) == 0 else { throw VMFactoryError(.io, "cannot create a pipe for the runtime's helper") }
        defer { close(report[0]) }
        var arguments = ["--root", line.root, "--log-format", line.logFormat.rawValue]
        if let log = line.log { arguments += ["--log", log] }
        if line.debug { arguments.append("--debug") }
        if let config = line.config { arguments += ["--config", config] }
        arguments += command + ["--report-fd", String(report[1])]
        var terminal: (master: Int32, slave: Int32)?
        if let socket = terminalSocket {
            let pair = try Self.openTerminal()
            do { try Self.sendMaster(pair.master, to: socket) } catch {
                close(pair.master)
                close(pair.slave)
                close(report[1])
                throw error
            }
            close(pair.master)
            terminal = pair
            arguments.append("--terminal")
        }
        arguments.append(id)
        let stdio: (ChildProcess.Stdio, ChildProcess.Stdio, ChildProcess.Stdio) = terminal.map { (.descriptor($0.slave), .descriptor($0.slave), .descriptor($0.slave)) }
            ?? (.descriptor(STDIN_FILENO), .descriptor(STDOUT_FILENO), .descriptor(STDERR_FILENO))
        defer {
            close(report[1])
            if let terminal { close(terminal.slave) }
        }
        let helper = try await ChildProcess.spawn(
            Command(executable, arguments), environment: environment, stdin: stdio.0, stdout: stdio.1, stderr: stdio.2,
            // Its status is for whoever adopts it once this call exits (conmon, the shim): a
            // helper that ends before then is left a zombie for them, never reaped here.
            newSession: true, parentDeathSignal: parentDeathSignal, keeping: [report[1]], anchorRoot: anchorRoot, handedOver: true
        )
        close(report[1])
        report[1] = -1
        if let terminal { close(terminal.slave) }
        terminal = nil
        return (helper, String(decoding: await PipeReader.readAll(report[0], limit: 1 << 16), as: UTF8.self))
    }

    /// A new pseudo-terminal: the master for the console socket, the slave for the container.
    static func openTerminal() throws -> (master: Int32, slave: Int32) {
        var master: Int32 = -1, slave: Int32 = -1
        guard vmf_open_pty(&master, &slave) == 0 else {
            throw VMFactoryError(.io, "cannot open a pseudo-terminal: \(String(cString: strerror(errno)))")
        }
        return (master, slave)
    }

    /// Sends the terminal's master over `--console-socket`, as runc does.
    static func sendMaster(_ master: Int32, to path: String) throws {
        let socket = try SocketIO.connect(to: path)
        defer { close(socket) }
        guard vmf_send_fd(socket, master) == 0 else {
            throw VMFactoryError(.io, "cannot send the terminal to the console socket \(path): \(String(cString: strerror(errno)))")
        }
    }

    // MARK: start, state, kill, delete

    func loadState(_ id: String) throws -> ContainerState {
        guard let state = try ContainerState.load(root: line.root, id: id) else {
            throw VMFactoryError(.notFound, "container \(id) does not exist", hint: "check the id, and that --root is the one the container was created with (\(line.root))")
        }
        return state
    }

    /// The supervisor's control socket, as the run's record says it.
    func runEntry(_ state: ContainerState) throws -> RunRegistry.Entry {
        let registry = RunRegistry(folders: runFolders(try configuration))
        guard let entry = registry.entry(registry.folders.root + "/" + state.runID) else {
            throw VMFactoryError(.notFound, "container \(state.id)'s run \(state.runID) is gone", hint: "delete the container")
        }
        return entry
    }

    func start() throws -> Int32 {
        let id = try line.containerID()
        let state = try loadState(id)
        switch state.currentStatus {
        case .created: break
        case .stopped: throw VMFactoryError(.invalidArgument, "cannot start container \(id): it has stopped", hint: "delete it and create it again")
        default: throw VMFactoryError(.invalidArgument, "cannot start container \(id): it is \(state.currentStatus.rawValue)", hint: "it has started already")
        }
        let answer = try RunClient.request(try runEntry(state), "start")
        // A process that could not be started (126, 127) is the container's own end: it says
        // why on its stderr and exits with that status, as docker's containers do.
        guard answer.code == 0 || answer.code == 126 || answer.code == 127 else {
            throw VMFactoryError(.processFailed, "container \(id) did not start: " + (answer.message.isEmpty ? "status \(answer.code)" : answer.message))
        }
        return 0
    }

    func state() throws -> Int32 {
        let id = try line.containerID()
        let state = try loadState(id)
        let data = try JSONSerialization.data(withJSONObject: state.ociState, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        print(String(decoding: data, as: UTF8.self))
        return 0
    }

    func kill() throws -> Int32 {
        let id = try line.containerID()
        let number = try line.positionals.count > 1 ? Signals.number(of: line.positionals[1], what: "kill's signal") : SIGTERM
        let state = try loadState(id)
        let status = state.currentStatus
        guard status != .stopped else {
            throw VMFactoryError(.invalidArgument, "container \(id) is not running", hint: "it has stopped already")
        }
        let entry = try runEntry(state)
        // A created container has no process yet: the signal ends its VM, as the process
        // would have ended had it run.
        let answer = try RunClient.request(entry, status == .created ? "end" : "kill \(number)")
        if status == .created { return 0 }
        guard answer.code == 0 else { throw VMFactoryError(.processFailed, "kill: \(answer.message)") }
        return 0
    }

    func delete() throws -> Int32 {
        let id = try line.containerID()
        guard let state = try ContainerState.load(root: line.root, id: id) else {
            // As runc: deleting what is not there is done.
            log.debug("delete \(id): no such container")
            return 0
        }
        if state.supervisorAlive {
            guard line.isSet("force", "f") || state.currentStatus == .created else {
                throw VMFactoryError(.invalidArgument, "cannot delete container \(id): it is \(state.currentStatus.rawValue)", hint: "stop it first, or delete --force")
            }
            if let entry = try? runEntry(state) { _ = try? RunClient.request(entry, "end") }
            let deadline = ContinuousClock.now + .seconds(10)
            while state.supervisorAlive, ContinuousClock.now < deadline { usleep(20_000) }
            if state.supervisorAlive {
                log.warning("container \(id)'s supervisor did not end within 10 s; killed")
                Glibc.kill(state.pid, SIGKILL)
            }
        }
        let registry = RunRegistry(folders: runFolders(try configuration))
        if let entry = registry.entry(registry.folders.root + "/" + state.runID) { try? registry.remove(entry) }
        try? FileManager.default.removeItem(atPath: ContainerState.folder(root: line.root, id: id))
        return 0
    }

    func pause(_ pausing: Bool) throws -> Int32 {
        let id = try line.containerID()
        var state = try loadState(id)
        let status = state.currentStatus
        guard status == (pausing ? .running : .paused) else {
            throw VMFactoryError(.invalidArgument, "cannot \(pausing ? "pause" : "resume") container \(id): it is \(status.rawValue)", hint: pausing ? "only a running container pauses" : "only a paused container resumes")
        }
        let answer = try RunClient.request(try runEntry(state), pausing ? "pause" : "resume")
        guard answer.code == 0 else { throw VMFactoryError(.processFailed, "\(pausing ? "pause" : "resume"): \(answer.message)") }
        state.status = pausing ? .paused : .running
        try state.write(root: line.root)
        return 0
    }

    /// The supervisor and its descendants (QEMU, virtiofsd, passt, the proxy helpers): the
    /// container's processes on the host. The processes inside the VM are the guest's.
    func ps() throws -> Int32 {
        let id = try line.containerID()
        let state = try loadState(id)
        var pids: [Int32] = []
        if state.supervisorAlive {
            var parents: [Int32: [Int32]] = [:]
            for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
                guard let pid = Int32(name), let stat = ContainerState.processStat(pid) else { continue }
                parents[stat.parent, default: []].append(pid)
            }
            var queue = [state.pid]
            while let pid = queue.popLast() {
                pids.append(pid)
                queue += parents[pid] ?? []
            }
        }
        if line.flag("format", "f") == "json" {
            print("[" + pids.sorted().map(String.init).joined(separator: ",") + "]")
        } else {
            print("PID\tCMD")
            for pid in pids.sorted() {
                let command = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .newlines) ?? "?"
                print("\(pid)\t\(command)")
            }
        }
        return 0
    }

    func features() -> Int32 {
        let features: [String: Any] = [
            "ociVersionMin": "1.0.0", "ociVersionMax": "1.1.0",
            "hooks": [String](), "mountOptions": ["ro", "rw", "nosuid", "nodev", "noexec", "size", "mode"],
            "linux": ["namespaces": ["mount", "network", "pid", "ipc", "uts"], "capabilities": [String](), "cgroup": ["v1": false, "v2": false]],
            "annotations": ["org.opencontainers.runtime-spec.features.vmfactory": "microvm", BundleRun.targetAnnotation: "x86_64|s390x"],
        ]
        let data = (try? JSONSerialization.data(withJSONObject: features, options: [.prettyPrinted, .sortedKeys])) ?? Data()
        print(String(decoding: data, as: UTF8.self))
        return 0
    }
}
