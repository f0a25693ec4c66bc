import Foundation
import Synchronization
import VMFactoryCore
import VMFactoryLifecycle

/// A run's control socket (`<sockets>/control.sock`, 0600 in a 0700 folder): where `exec`,
/// `stop`, `kill`, `wait` and `rm -f` reach the run's supervisor. Each connection starts with
/// one request frame:
///
/// - `exec` and the process's settings (key=value lines): the connection then carries that
///   process's frames both ways, as on the guest's channel, until its exit;
/// - `kill N`: signal N to the command, answered at once;
/// - `stop SECONDS`, `wait`, `end`: answered with the run's exit status once the VM has ended;
/// - `pause`, `resume`: QEMU's stop and cont;
/// - `start`: the held settings go (the OCI runtime's start), answered with 0 once the command
///   has started, or with the run's exit status if it ended first.
final class RunControl: Sendable {
    let listener: UnixListener
    let channels: RunChannels
    let process: ContainerProcess
    /// QEMU's monitor, for pause and resume.
    let monitor: QEMUMonitor?
    private let ended = Mutex<(outcome: (code: Int32, message: String?)?, waiters: [Int32])>((nil, []))
    /// Who waits for the command's start, until it has started.
    private let starting = Mutex<(started: Bool, waiters: [Int32])>((false, []))

    init(path: String, channels: RunChannels, process: ContainerProcess, monitor: QEMUMonitor? = nil) throws {
        listener = try UnixListener(path: path)
        self.channels = channels
        self.process = process
        self.monitor = monitor
    }

    func start() {
        Thread.detachNewThread { [self] in
            while let connection = listener.accept() {
                Thread.detachNewThread { [self] in serve(connection) }
            }
        }
    }

    /// The command has started: whoever waits for the start hears 0.
    func commandStarted() {
        let waiters = starting.withLock { starting in
            starting.started = true
            defer { starting.waiters = [] }
            return starting.waiters
        }
        for fd in waiters { answer(fd, 0, "") }
    }

    /// The VM is given up before the run began (it boots again): nobody connects to this
    /// listener any more; the next one takes the socket's path.
    func abandon() {
        listener.close()
    }

    /// The run has ended with `code`: every waiter hears it, and nobody connects any more.
    func finish(code: Int32, message: String?) {
        listener.close()
        let starters = starting.withLock { starting in
            defer { starting.waiters = [] }
            return starting.waiters
        }
        for fd in starters { answer(fd, code == 0 ? 1 : code, message ?? "the run ended before its command started") }
        let waiters = ended.withLock { ended in
            ended.outcome = (code, message)
            defer { ended.waiters = [] }
            return ended.waiters
        }
        for fd in waiters { answer(fd, code, message ?? "") }
    }

    private func answer(_ fd: Int32, _ code: Int32, _ text: String) {
        let frame = RunProtocol.Frame(.reply, number: UInt32(bitPattern: code), text: text).encoded
        _ = frame.withUnsafeBytes { SocketIO.writeAll(fd, $0) }
        close(fd)
    }

    /// Answers `fd` once the run has ended (at once if it has).
    private func answerAtEnd(_ fd: Int32) {
        let outcome = ended.withLock { ended -> (code: Int32, message: String?)? in
            if ended.outcome == nil { ended.waiters.append(fd) }
            return ended.outcome
        }
        if let outcome { answer(fd, outcome.code, outcome.message ?? "") }
    }

    private func serve(_ fd: Int32) {
        var decoder = RunProtocol.Decoder(limit: RunProtocol.largestPayload, local: true)
        guard let request = RunProtocol.readFrame(fd, &decoder), request.type == .request else {
            close(fd)
            return
        }
        let text = String(decoding: request.payload, as: UTF8.self)
        let verb = text.prefix { $0 != " " && $0 != "\n" }
        let argument = text.dropFirst(verb.count).drop { $0 == " " || $0 == "\n" }
        switch verb {
        case "exec":
            relayExec(fd, settings: String(argument), decoder: &decoder)
        case "kill":
            guard let number = UInt32(argument), number > 0, number < 65 else { return answer(fd, 2, "kill: \(argument) is not a signal number") }
            channels.post(.kill(Int32(number)))
            answer(fd, 0, "")
        case "stop":
            guard let seconds = Int(argument), seconds >= 0 else { return answer(fd, 2, "stop: \(argument) is not a number of seconds") }
            channels.post(.stop(grace: .seconds(seconds)))
            answerAtEnd(fd)
        case "end":
            channels.post(.remove)
            answerAtEnd(fd)
        case "wait":
            answerAtEnd(fd)
        case "pause", "resume":
            // QEMU's stop and cont: the vCPUs halt, the guest's clock with them.
            guard let monitor else { return answer(fd, 2, "\(verb): this run has no monitor") }
            // The save pauses and resumes the VM itself: a pause now would be undone by it.
            guard !channels.savingTemplate else { return answer(fd, 1, "\(verb): the VM is being saved as a template; try again in a moment") }
            let failure = monitor.execute(verb == "pause" ? "stop" : "cont")
            answer(fd, failure == nil ? 0 : 1, failure ?? "")
        case "start":
            if let outcome = ended.withLock({ $0.outcome }) {
                return answer(fd, outcome.code == 0 ? 1 : outcome.code, outcome.message ?? "the run has ended")
            }
            let started = starting.withLock { starting -> Bool in
                if !starting.started { starting.waiters.append(fd) }
                return starting.started
            }
            if started { answer(fd, 0, "") } else { channels.post(.start) }
        default:
            answer(fd, 2, "unknown request \(verb)")
        }
    }

    /// The exec's settings with the run's own as defaults: its user, folder and environment
    /// (docker exec's), the exec's `-e` over the run's.
    static func execSettings(_ text: String, process: ContainerProcess) -> String? {
        guard let pairs = RunProtocol.keyValuePairs(text), pairs.contains(where: { $0.0 == "arg" }) else { return nil }
        var environment = EnvironmentList()
        // Both lists were checked where they were made (the run's plan, the exec's client).
        for entry in process.environment + pairs.filter({ $0.0 == "env" }).map(\.1) {
            try? environment.set(entry, from: "exec", hostEnvironment: [:])
        }
        var merged = pairs.filter { $0.0 == "arg" }
        merged += environment.entries.map { ("env", $0) }
        merged.append(("user", pairs.last { $0.0 == "user" }?.1 ?? process.user))
        merged.append(("workdir", pairs.last { $0.0 == "workdir" }?.1 ?? process.workdir))
        merged += pairs.filter { ["stdin", "tty", "rows", "cols", "copyout", "copyin", "copytop"].contains($0.0) || ProcessPrivileges.keys.contains($0.0) }
        return RunProtocol.keyValueText(merged)
    }

    /// Relays one exec between its client and the guest until its exit. Output is written to
    /// the client by a queue of the connection's own, and the guest gets room for more only
    /// once a write is done. A client that goes away leaves its process running (as docker's
    /// exec does); what it would have got is dropped.
    private func relayExec(_ fd: Int32, settings: String, decoder: inout RunProtocol.Decoder) {
        guard let merged = Self.execSettings(settings, process: process) else {
            let failure = RunProtocol.Frame(.error, number: 125, text: "exec: the request names no command").encoded
            _ = failure.withUnsafeBytes { SocketIO.writeAll(fd, $0) }
            close(fd)
            return
        }
        let queue = DispatchQueue(label: "vmfactory.exec")
        // The descriptor is closed once both directions are done with it.
        let users = Atomic<Int>(2)
        let done: @Sendable () -> Void = {
            if users.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { close(fd) }
        }
        let channels = channels
        let streamHolder = Mutex<UInt32>(0)
        // The exec's output received and not yet written to its client: at most a window.
        let outstanding = Atomic<Int>(0)
        let opened = channels.openStream { frame in
            let stream = streamHolder.withLock { $0 }
            guard let frame else {
                queue.async {
                    let failure = RunProtocol.Frame(.error, stream: stream, number: 137, text: "the VM ended before the process did").encoded
                    _ = failure.withUnsafeBytes { SocketIO.writeAll(fd, $0) }
                    shutdown(fd, Int32(SHUT_WR))
                    done()
                }
                return
            }
            if frame.type == .stdout || frame.type == .stderr,
               outstanding.add(frame.payload.count, ordering: .acquiringAndReleasing).newValue > Int(RunProtocol.window) {
                channels.post(.protocolBroken("the guest broke the run protocol (an exec's output beyond the room it was given); the VM was ended"))
                return
            }
            queue.async {
                let bytes = frame.encoded
                _ = bytes.withUnsafeBytes { SocketIO.writeAll(fd, $0) }
                switch frame.type {
                case .stdout, .stderr:
                    outstanding.subtract(frame.payload.count, ordering: .acquiringAndReleasing)
                    channels.send(RunProtocol.Frame(.credit, stream: stream, number: UInt32(frame.payload.count)))
                case .exit, .error:
                    shutdown(fd, Int32(SHUT_WR))
                    done()
                default:
                    break
                }
            }
        }
        guard let stream = opened else {
            let failure = RunProtocol.Frame(.error, number: 125, text: "the run has ended; there is nothing to exec into").encoded
            _ = failure.withUnsafeBytes { SocketIO.writeAll(fd, $0) }
            close(fd)
            return
        }
        // Set before the guest can answer: the exec frame goes out only now.
        streamHolder.withLock { $0 = stream }
        channels.send(RunProtocol.Frame(.exec, stream: stream, payload: Array(merged.utf8)))
        while let frame = RunProtocol.readFrame(fd, &decoder) {
            switch frame.type {
            case .stdin, .signal, .windowSize:
                channels.send(RunProtocol.Frame(frame.type, stream: stream, payload: frame.payload))
            default:
                break
            }
        }
        done()
    }
}
