import CLinux
import Foundation
import Synchronization

/// A child process that cannot outlive vmfactory.
///
/// Every child is forked by one thread that lives as long as the process and asks the kernel
/// for a parent-death signal (`PR_SET_PDEATHSIG`): the kernel sends it when the forking
/// thread ends, so it must be a thread that ends only with vmfactory, never one of the
/// thread pools' workers, which come and go. Whatever ends vmfactory (Ctrl-C, SIGTERM,
/// SIGKILL, a crash), its children get the signal. Each child also leads a process group of
/// its own, so that a stop reaches what the child started (make's compilers, for example).
public final class ChildProcess: Sendable {
    /// A standard descriptor of the child.
    public enum Stdio: Sendable {
        /// `/dev/null`.
        case null
        /// An open descriptor of ours, which the child shares (a log file, our own stdout).
        case descriptor(Int32)
        /// A new pipe; our end is in `stdin`, `stdout` or `stderr`.
        case pipe
        /// stderr only: wherever stdout goes, interleaved with it.
        case sameAsStdout
    }

    public let pid: pid_t
    public let command: Command
    /// Our ends of the pipes asked for; the owner closes them.
    public let stdin: Int32?
    public let stdout: Int32?
    public let stderr: Int32?

    private struct State {
        var termination: CommandResult.Termination?
        var waiters: [CheckedContinuation<CommandResult.Termination, Never>] = []
    }
    private let state = Mutex(State())

    private init(pid: pid_t, command: Command, stdin: Int32?, stdout: Int32?, stderr: Int32?) {
        self.pid = pid
        self.command = command
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
    }

    /// Starts `command` with `environment` as its complete environment.
    /// - Parameters:
    ///   - newSession: the child leads a session (for a terminal of its own); otherwise a
    ///     process group.
    ///   - parentDeathSignal: what the child gets when vmfactory ends; the command's own
    ///     `deathSignal` unless given.
    public static func spawn(
        _ command: Command, environment: [String: String],
        stdin: Stdio = .null, stdout: Stdio, stderr: Stdio,
        newSession: Bool = false, parentDeathSignal: Int32? = nil,
        identity: ProcessIdentity? = nil, keeping kept: [Int32] = [], anchorRoot: String? = nil, handedOver: Bool = false
    ) async throws -> ChildProcess {
        let path = try resolveExecutable(command.executable, path: environment["PATH"] ?? "/usr/bin:/bin")
        let descriptors = try Descriptors(stdin: stdin, stdout: stdout, stderr: stderr, for: command)
        let envp = environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let attributes = (newSession: newSession, deathSignal: parentDeathSignal ?? command.deathSignal)
        let result: Result<pid_t, VMFactoryError> = await SpawnThread.shared.perform {
            fork(command, path: path, envp: envp, descriptors: descriptors, newSession: attributes.newSession, deathSignal: attributes.deathSignal, identity: identity, kept: kept, anchorRoot: anchorRoot)
        }
        // The child has its copies of its ends; ours go, so that our reads see an end of file
        // when the child exits.
        descriptors.closeChildEnds()
        switch result {
        case .failure(let failure):
            descriptors.closeOurEnds()
            throw failure
        case .success(let pid):
            let child = ChildProcess(pid: pid, command: command, stdin: descriptors.stdin.ours, stdout: descriptors.stdout.ours, stderr: descriptors.stderr.ours)
            child.startReaping(leavingZombie: handedOver)
            return child
        }
    }

    /// The child's three standard descriptors, and our ends of the pipes among them.
    struct Descriptors: Sendable {
        var stdin: (child: Int32, ours: Int32?) = (-1, nil)
        var stdout: (child: Int32, ours: Int32?) = (-1, nil)
        var stderr: (child: Int32, ours: Int32?) = (-1, nil)
        private var pipes: [Int32] = []

        init(stdin: Stdio, stdout: Stdio, stderr: Stdio, for command: Command) throws {
            do {
                self.stdin = try make(stdin, childReads: true, command)
                self.stdout = try make(stdout, childReads: false, command)
                if case .sameAsStdout = stderr { self.stderr = (self.stdout.child, nil) } else { self.stderr = try make(stderr, childReads: false, command) }
            } catch {
                for fd in pipes { close(fd) }
                throw error
            }
        }

        private mutating func make(_ stdio: Stdio, childReads: Bool, _ command: Command) throws -> (child: Int32, ours: Int32?) {
            switch stdio {
            case .null, .sameAsStdout: return (-1, nil)
            case .descriptor(let fd): return (fd, nil)
            case .pipe:
                var ends: [Int32] = [-1, -1]
                guard vmf_pipe_cloexec(&ends) == 0 else { throw VMFactoryError.io("cannot create a pipe for", path: command.executable) }
                pipes += ends
                return childReads ? (ends[0], ends[1]) : (ends[1], ends[0])
            }
        }

        func closeChildEnds() {
            for fd in pipes where [stdin.child, stdout.child, stderr.child].contains(fd) { close(fd) }
        }

        func closeOurEnds() {
            for fd in [stdin.ours, stdout.ours, stderr.ours].compactMap({ $0 }) { close(fd) }
        }
    }

    /// Runs on the spawn thread: the C strings, and `vmf_spawn`.
    private static func fork(
        _ command: Command, path: String, envp: [String], descriptors: Descriptors, newSession: Bool, deathSignal: Int32,
        identity: ProcessIdentity?, kept: [Int32], anchorRoot: String?
    ) -> Result<pid_t, VMFactoryError> {
        let groups = identity?.groups ?? []
        return withCStrings(command.argv) { argv in
            withCStrings(envp) { envp in
                path.withCString { pathPointer in
                    let spawn = { (directory: UnsafePointer<CChar>?) -> Result<pid_t, VMFactoryError> in
                        kept.withUnsafeBufferPointer { keptFDs in
                            groups.withUnsafeBufferPointer { groupIDs in
                                var attributes = vmf_spawn_attributes(
                                    path: pathPointer, argv: argv, envp: envp, working_directory: directory,
                                    stdin_fd: descriptors.stdin.child, stdout_fd: descriptors.stdout.child, stderr_fd: descriptors.stderr.child,
                                    new_process_group: newSession ? 0 : 1, new_session: newSession ? 1 : 0, parent_death_signal: deathSignal,
                                    kept_fds: keptFDs.baseAddress, kept_fd_count: Int32(kept.count),
                                    change_identity: identity == nil ? 0 : 1, uid: identity?.uid ?? 0, gid: identity?.gid ?? 0,
                                    groups: groupIDs.baseAddress, group_count: Int32(groups.count), anchor_root: nil
                                )
                                var pid: pid_t = 0
                                let status = withOptionalCString(anchorRoot) { root in
                                    attributes.anchor_root = root
                                    return vmf_spawn(&attributes, &pid)
                                }
                                return status == 0 ? .success(pid) : .failure(spawnError(command, path: path, errno: status))
                            }
                        }
                    }
                    if let directory = command.workingDirectory { return directory.withCString { spawn($0) } }
                    return spawn(nil)
                }
            }
        }
    }

    static func spawnError(_ command: Command, path: String, errno code: Int32) -> VMFactoryError {
        let reason = String(cString: strerror(code))
        if code == ENOENT || code == EACCES || code == ENOEXEC {
            if let directory = command.workingDirectory, !FileStore.isDirectory(directory) {
                return VMFactoryError(.io, "cannot run \(command.executable) in \(directory): \(reason)", hint: "the working directory is missing")
            }
            return VMFactoryError(
                .missingTool, "cannot run \(path): \(reason)",
                hint: "run `vmfactory doctor` to see which host tools are missing", details: ["command: \(command)"]
            )
        }
        return VMFactoryError(.processFailed, "cannot start \(command.executable): \(reason)", details: ["command: \(command)"])
    }

    /// The absolute path of `name`: itself when it holds a slash, else the first executable
    /// file of that name in `path`, then in the sbin folders, which a user's PATH often leaves
    /// out though their tools (mke2fs, debugfs) serve users too.
    public static func resolveExecutable(_ name: String, path: String) throws -> String {
        if name.contains("/") { return name }
        for folder in path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"] where !folder.isEmpty {
            let candidate = folder + "/" + name
            if access(candidate, X_OK) == 0, FileStore.isRegularFile(candidate) { return candidate }
        }
        throw VMFactoryError(
            .missingTool, "cannot run \(name): it is not installed (not found on PATH)",
            hint: "run `vmfactory doctor` to see which host tools are missing and the apt-get line that adds them"
        )
    }

    /// Collects the child's exit status on a thread of its own (waitpid blocks).
    /// Waits for the child's end. `leavingZombie`: a child handed over to whoever adopts it
    /// once we exit (an OCI container's pid, for conmon or containerd's shim) is not reaped, so
    /// that its status stays for them.
    private func startReaping(leavingZombie: Bool) {
        let pid = self.pid
        Thread.detachNewThread { [self] in
            var status: Int32 = 0
            var result: pid_t
            if leavingZombie {
                var signaled: Int32 = 0, code: Int32 = 0
                result = vmf_wait_leaving_zombie(pid, &signaled, &code) == 0 ? pid : -1
                status = signaled != 0 ? code & 0x7f : (code & 0xff) << 8
            } else {
                repeat { result = waitpid(pid, &status, 0) } while result < 0 && errno == EINTR
            }
            let termination: CommandResult.Termination
            if result < 0 {
                termination = .exited(-1)
            } else if status & 0x7f == 0 {
                termination = .exited((status >> 8) & 0xff)
            } else {
                termination = .signaled(status & 0x7f)
            }
            let waiters = state.withLock { state in
                state.termination = termination
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter.resume(returning: termination) }
        }
    }

    /// How the child ended; waits until it has.
    public func wait() async -> CommandResult.Termination {
        await withCheckedContinuation { continuation in
            let done = state.withLock { state -> CommandResult.Termination? in
                if let termination = state.termination { return termination }
                state.waiters.append(continuation)
                return nil
            }
            if let done { continuation.resume(returning: done) }
        }
    }

    public var hasExited: Bool { state.withLock { $0.termination != nil } }

    /// Sends `signal` to the child's whole process group.
    public func signal(_ signal: Int32) {
        kill(-pid, signal)
    }

    /// Sends `signal` to the child alone (the command in the guest of a run, not its group).
    public func signalLeader(_ signal: Int32) {
        guard !hasExited else { return }
        kill(pid, signal)
    }

    /// SIGTERM to the group now, SIGKILL to what is left of it after `grace`. The group id
    /// stays reserved while any member lives, so the late SIGKILL cannot hit a stranger.
    public func terminate(grace: Duration) {
        signal(SIGTERM)
        DispatchQueue.global().asyncAfter(deadline: .now() + grace.timeInterval) { [self] in
            signal(SIGKILL)
        }
    }

    /// Waits for the child; when the calling task is cancelled meanwhile, stops it (SIGTERM,
    /// then SIGKILL after `grace`) and still waits for it to be gone.
    public func wait(stoppingOnCancel grace: Duration) async -> CommandResult.Termination {
        await withTaskCancellationHandler {
            await wait()
        } onCancel: {
            terminate(grace: grace)
        }
    }
}

/// The one thread that forks every child; see `ChildProcess`.
final class SpawnThread: @unchecked Sendable {
    static let shared = SpawnThread()

    private let condition = NSCondition()
    private var jobs: [() -> Void] = []

    private init() {
        let thread = Thread { [self] in run() }
        thread.name = "vmfactory-spawn"
        thread.start()
    }

    private func run() {
        while true {
            condition.lock()
            while jobs.isEmpty { condition.wait() }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
        }
    }

    func perform<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            condition.lock()
            jobs.append { continuation.resume(returning: body()) }
            condition.signal()
            condition.unlock()
        }
    }
}

/// Calls `body` with a NULL-terminated C array of `strings`.
func withOptionalCString<T>(_ string: String?, _ body: (UnsafePointer<CChar>?) -> T) -> T {
    guard let string else { return body(nil) }
    return string.withCString { body($0) }
}

func withCStrings<T>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> T) -> T {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for pointer in pointers { free(pointer) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
