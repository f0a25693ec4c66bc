import CLinux
import Foundation
import Synchronization
import VMFactoryCore

/// The commands' side of a run's control socket (`RunControl`): requests that are answered
/// with a status, and an exec relayed both ways until its exit.
public enum RunClient {
    /// A connection to the run's supervisor; a clear error when the run is not running.
    static func connect(_ entry: RunRegistry.Entry) throws -> Int32 {
        guard entry.record.status != .exited else { throw notRunning(entry) }
        do {
            return try SocketIO.connect(to: entry.record.controlSocket)
        } catch {
            throw notRunning(entry)
        }
    }

    static func notRunning(_ entry: RunRegistry.Entry) -> VMFactoryError {
        let record = entry.record
        let how = record.status == .exited ? "it exited with \(record.exitCode ?? 0)" + (record.message.map { " (\($0))" } ?? "") : "its supervisor does not answer"
        return VMFactoryError(.invalidArgument, "the run \(record.id) is not running: \(how)", hint: "`vmfactory ps -a` lists the runs; `vmfactory logs \(record.id)` shows its output")
    }

    /// One frame whole: the stdin thread and the window-size handler never interleave theirs.
    static let sending = Mutex(())

    static func send(_ fd: Int32, _ frame: RunProtocol.Frame) -> Bool {
        let bytes = frame.encoded
        return sending.withLock { _ in bytes.withUnsafeBytes { SocketIO.writeAll(fd, $0) } }
    }

    /// Sends `text` and waits for the reply: its status and message.
    public static func request(_ entry: RunRegistry.Entry, _ text: String) throws -> (code: Int32, message: String) {
        let fd = try connect(entry)
        defer { close(fd) }
        guard send(fd, RunProtocol.Frame(.request, payload: Array(text.utf8))) else { throw notRunning(entry) }
        var decoder = RunProtocol.Decoder(limit: RunProtocol.largestPayload, local: true)
        guard let reply = RunProtocol.readFrame(fd, &decoder), reply.type == .reply, let number = reply.number else {
            throw VMFactoryError(.processFailed, "the run \(entry.record.id)'s supervisor ended without an answer", hint: "`vmfactory ps -a` says how the run ended")
        }
        return (Int32(bitPattern: number), reply.text)
    }

    /// What `vmfactory exec` asks for.
    public struct Exec: Sendable {
        public var argv: [String]
        /// `-e` and `--env-file`, over the run's environment.
        public var environment: [String] = []
        public var user: String?
        public var workdir: String?
        public var interactive = false
        public var tty = false
        public var detach = false
        public var windowSize: (rows: Int, cols: Int)?
        /// vmfactory cp: the init's own tar of this path out, or into it (`copyTop` its top entry).
        public var copyOut: String?
        public var copyIn: String?
        public var copyTop: String?
        /// Where stdin comes from with `interactive`.
        public var input: Int32 = STDIN_FILENO
        /// An OCI runtime's groups, limits, capabilities, no_new_privs and umask.
        public var privileges = ProcessPrivileges()
        /// Called once the process has started (the OCI runtime's `exec --detach` returns then).
        public var onStarted: (@Sendable () -> Void)?
        /// Told of a failure to start (its status and the guest's words) instead of stderr.
        public var onStartFailure: (@Sendable (Int32, String) -> Void)?

        public init(argv: [String]) {
            self.argv = argv
        }

        var settings: String {
            var pairs = argv.map { ("arg", $0) } + environment.map { ("env", $0) }
            if let copyOut { pairs.append(("copyout", copyOut)) }
            if let copyIn { pairs.append(("copyin", copyIn)) }
            if let copyTop { pairs.append(("copytop", copyTop)) }
            if let user { pairs.append(("user", user)) }
            if let workdir { pairs.append(("workdir", workdir)) }
            pairs += [("stdin", interactive ? "1" : "0"), ("tty", tty ? "1" : "0")]
            pairs += privileges.settings
            if tty, let windowSize { pairs += [("rows", String(windowSize.rows)), ("cols", String(windowSize.cols))] }
            return RunProtocol.keyValueText(pairs)
        }
    }

    /// Runs `exec` in the run and relays it: our stdin to it (with -i, within the room the
    /// guest grants), its stdout and stderr to ours. Returns its exit status (docker's: the
    /// process's, or 126, 127 and 125 with a message on stderr); with -d, 0 once it started.
    public static func exec(_ entry: RunRegistry.Entry, _ exec: Exec, stdout: TextOutput, stderr: TextOutput, signals: SignalForwarding?) throws -> Int32 {
        let fd = try connect(entry)
        defer { close(fd) }
        guard send(fd, RunProtocol.Frame(.request, payload: Array(("exec\n" + exec.settings).utf8))) else { throw notRunning(entry) }
        let raw = exec.tty && exec.interactive ? RawTerminal(fd: STDIN_FILENO) : nil
        defer { raw?.restore() }
        let credit = Mutex<(room: UInt32, ended: Bool)>((RunProtocol.window, false))
        let room = DispatchSemaphore(value: 0)
        let started = DispatchSemaphore(value: 0)
        if exec.interactive && !exec.detach {
            Thread.detachNewThread {
                started.wait()
                guard !credit.withLock({ $0.ended }) else { return }
                PipeReader.forEachChunk(exec.input) { chunk in
                    var offset = 0
                    while offset < chunk.count {
                        let take = credit.withLock { state -> Int in
                            guard !state.ended else { return -1 }
                            let take = min(Int(state.room), RunProtocol.largestData, chunk.count - offset)
                            state.room -= UInt32(take)
                            return take
                        }
                        if take < 0 { return false }
                        if take == 0 {
                            room.wait()
                            continue
                        }
                        guard send(fd, RunProtocol.Frame(.stdin, payload: Array(chunk[offset..<(offset + take)]))) else { return false }
                        offset += take
                    }
                    return true
                }
                _ = send(fd, RunProtocol.Frame(.stdin))
            }
        }
        if exec.tty {
            signals?.handle { number in
                guard number == SIGWINCH, let size = RawTerminal.size(of: STDIN_FILENO) else { return }
                let rows = UInt16(clamping: size.rows), cols = UInt16(clamping: size.cols)
                _ = send(fd, RunProtocol.Frame(.windowSize, payload: [UInt8(rows >> 8), UInt8(rows & 0xff), UInt8(cols >> 8), UInt8(cols & 0xff)]))
            }
        }
        defer {
            signals?.handle(nil)
            credit.withLock { $0.ended = true }
            room.signal()
            started.signal()
        }
        var decoder = RunProtocol.Decoder(limit: RunProtocol.largestPayload, local: true)
        while let frame = RunProtocol.readFrame(fd, &decoder) {
            switch frame.type {
            case .started:
                exec.onStarted?()
                if exec.detach { return 0 }
                started.signal()
            case .stdout:
                stdout.write(Data(frame.payload))
            case .stderr:
                stderr.write(Data(frame.payload))
            case .credit:
                guard let more = frame.number else { continue }
                credit.withLock { $0.room = $0.room.addingReportingOverflow(more).overflow ? .max : $0.room + more }
                room.signal()
            case .exit:
                guard let report = RunProtocol.ExitReport(frame.payload) else {
                    stderr.writeLine("vmfactory: error: the guest's exit report is malformed")
                    return 125
                }
                return report.code
            case .error:
                guard let failure = RunProtocol.StartFailure(frame) else { return 125 }
                if let told = exec.onStartFailure { told(failure.code, failure.message) } else { stderr.writeLine("vmfactory: error: " + failure.message) }
                return failure.code
            default:
                continue
            }
        }
        stderr.writeLine("vmfactory: error: the run \(entry.record.id) ended before the process did")
        return 125
    }
}
