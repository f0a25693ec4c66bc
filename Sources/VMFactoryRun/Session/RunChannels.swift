import CLinux
import Foundation
import Synchronization
import VMFactoryBoot
import VMFactoryCore

/// The host's side of a run's virtio-serial ports: the command's stdout and stderr to ours,
/// our stdin to it, the terminal with -t, and the control channel that carries its start,
/// its end, signals and window sizes. Each port is relayed by a thread of its own, since
/// every read blocks.
final class RunChannels: Sendable {
    enum Ending: Sendable {
        case timedOut
        /// vmfactory's own task was cancelled (in-process callers).
        case interrupted
        /// The command did not stop within the grace period after a stop.
        case stopKilled
        /// QEMU said that its accelerator stopped the guest for good (QEMU's line).
        case acceleratorFailed(String)
    }

    struct ExitLine: Sendable {
        var code: Int32
        var bytes: [RunPlan.Port: UInt64]
        /// Processes the guest kernel's OOM killer ended while the command ran.
        var oomKills: UInt64 = 0
    }

    /// The longest line the init sends on the control channel; a longer one ends the channel.
    static let longestControlLine = 4096

    private struct State {
        var ending: Ending?
        var exit: ExitLine?
        var error: (code: Int32, message: String)?
        var started: ContinuousClock.Instant?
        var received: [RunPlan.Port: UInt64] = [:]
        var connections: [RunPlan.Port: Int32] = [:]
        var stops = 0
        var relaysRunning = 0
    }

    let plan: RunPlan
    let qemu: ChildProcess
    let stdout: TextOutput
    let stderr: TextOutput
    let stopGrace: Duration
    private let state = Mutex(State())
    private let relaysDone = DispatchSemaphore(value: 0)

    init(plan: RunPlan, qemu: ChildProcess, stdout: TextOutput, stderr: TextOutput, stopGrace: Duration) {
        self.plan = plan
        self.qemu = qemu
        self.stdout = stdout
        self.stderr = stderr
        self.stopGrace = stopGrace
    }

    /// Starts the relays on our ends of the ports' socket pairs (QEMU has the other ends).
    func connect(_ ends: [RunPlan.Port: Int32]) {
        state.withLock { $0.connections = ends }
        for (port, fd) in ends { start(port, fd) }
    }

    private func start(_ port: RunPlan.Port, _ fd: Int32) {
        switch port {
        case .stdout, .tty:
            relay(port, fd, to: stdout)
            if port == .tty, plan.interactive { feed(fd, shutdownAtEnd: false) }
        case .stderr:
            relay(port, fd, to: stderr)
        case .stdin:
            feed(fd, shutdownAtEnd: true)
        case .control:
            state.withLock { $0.relaysRunning += 1 }
            Thread.detachNewThread { [self] in
                readControl(fd)
                relayEnded()
            }
        }
    }

    /// The guest's bytes on `port` to one of our outputs, counted.
    private func relay(_ port: RunPlan.Port, _ fd: Int32, to output: TextOutput) {
        state.withLock { $0.relaysRunning += 1 }
        Thread.detachNewThread { [self] in
            PipeReader.forEachChunk(fd) { chunk in
                output.write(Data(chunk))
                state.withLock { $0.received[port, default: 0] += UInt64(chunk.count) }
                return true
            }
            relayEnded()
        }
    }

    /// Our stdin to the guest. At its end, stdin's port sees an end of file (our direction
    /// shut down, theirs still open); a terminal's port stays open.
    private func feed(_ fd: Int32, shutdownAtEnd: Bool) {
        Thread.detachNewThread {
            PipeReader.forEachChunk(STDIN_FILENO) { chunk in SocketIO.writeAll(fd, chunk) }
            if shutdownAtEnd { SocketIO.shutdownWrite(fd) }
        }
    }

    private func relayEnded() {
        let last = state.withLock { state -> Bool in
            state.relaysRunning -= 1
            return state.relaysRunning == 0
        }
        if last { relaysDone.signal() }
    }

    /// The init's lines: "started PID", "exit CODE [signal N] out=B err=B tty=B",
    /// "error CODE MESSAGE".
    private func readControl(_ fd: Int32) {
        var pending: [UInt8] = []
        PipeReader.forEachChunk(fd) { chunk in
            pending.append(contentsOf: chunk)
            while let newline = pending.firstIndex(of: 0x0a) {
                let line = String(decoding: pending[..<newline], as: UTF8.self)
                pending.removeSubrange(...newline)
                handle(line, control: fd)
            }
            // The guest writes this channel: a line without an end is not kept growing.
            return pending.count <= Self.longestControlLine
        }
    }

    private func handle(_ line: String, control fd: Int32) {
        let words = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        switch words.first {
        case "started":
            state.withLock { $0.started = .now }
        case "exit":
            guard words.count >= 2, let code = Int32(words[1]) else { return }
            var bytes: [RunPlan.Port: UInt64] = [:]
            var oomKills: UInt64 = 0
            for word in words.dropFirst(2) {
                let pair = word.split(separator: "=").map(String.init)
                guard pair.count == 2, let count = UInt64(pair[1]) else { continue }
                switch pair[0] {
                case "out": bytes[.stdout] = count
                case "err": bytes[.stderr] = count
                case "tty": bytes[.tty] = count
                case "oom": oomKills = count
                default: break
                }
            }
            state.withLock { $0.exit = ExitLine(code: code, bytes: bytes, oomKills: oomKills) }
            // The init waits for this before it ends the machine: every byte it sent is here.
            let expected = bytes
            Thread.detachNewThread { [self] in
                while !qemu.hasExited {
                    let complete = state.withLock { state in expected.allSatisfy { state.received[$0.key, default: 0] >= $0.value } }
                    if complete { break }
                    usleep(1000)
                }
                SocketIO.writeAll(fd, "bye\n")
            }
        case "error":
            guard words.count >= 2, let code = Int32(words[1]) else { return }
            state.withLock { $0.error = (code, words.dropFirst(2).joined(separator: " ")) }
            // The init waits for this before it ends the machine: the message is here.
            SocketIO.writeAll(fd, "bye\n")
        default:
            break
        }
    }

    /// When the init said the command started.
    var startedAfter: ContinuousClock.Instant? { state.withLock { $0.started } }

    /// Sends a line to the init, if the control channel is up.
    func tell(_ line: String) {
        guard let fd = state.withLock({ $0.connections[.control] }) else { return }
        SocketIO.writeAll(fd, line + "\n")
    }

    /// Ends the VM for `reason` (nil: QEMU failed to connect), unless something ended it first.
    func end(_ reason: Ending?, evenAfterExit: Bool = false) {
        if let reason {
            let first = state.withLock { state -> Bool in
                // Once the command has ended, the machine ends by itself as soon as its last
                // output is here: a timeout or a grace period ending then would cut that off.
                guard state.ending == nil, state.exit == nil || evenAfterExit else { return false }
                state.ending = reason
                return true
            }
            guard first else { return }
        }
        qemu.terminate(grace: .milliseconds(500))
    }

    /// SIGINT or SIGTERM: the stop signal to the command, and the end of the VM after the grace
    /// period (or at a second one). SIGHUP goes to the command; SIGWINCH becomes the
    /// terminal's new size.
    func forwardSignals(_ forwarding: SignalForwarding) {
        forwarding.handle { [self] number in
            switch number {
            case SIGINT, SIGTERM:
                let stops = state.withLock { state -> Int in
                    state.stops += 1
                    return state.stops
                }
                guard stops == 1 else {
                    end(.stopKilled, evenAfterExit: true)
                    return
                }
                stderr.writeLine("vmfactory: stopping: the command got its stop signal; the VM ends in \(Elapsed.format(stopGrace)) unless it exits first (again to end it now)")
                tell("signal \(SIGTERM)")
                let grace = stopGrace
                DispatchQueue.global().asyncAfter(deadline: .now() + grace.timeInterval) { [self] in
                    if !qemu.hasExited { end(.stopKilled) }
                }
            case SIGWINCH:
                if plan.tty, let size = RawTerminal.size(of: STDIN_FILENO) { tell("winsize \(size.rows) \(size.cols)") }
            default:
                tell("signal \(number)")
            }
        }
    }

    /// Waits until the output relays have reached the end of what QEMU sent (QEMU has exited).
    func finish() async {
        let hasRelays = state.withLock { $0.relaysRunning > 0 }
        guard hasRelays else { return }
        let done = relaysDone
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                _ = done.wait(timeout: .now() + 10)
                continuation.resume()
            }
        }
        // Shut down, not closed: a thread still blocked on one of them returns, and no
        // descriptor number is reused under it.
        state.withLock { state in
            for fd in state.connections.values { shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    /// The exit status, and what to say when it is vmfactory's, not the command's.
    func outcome(connected: Bool, termination: CommandResult.Termination, qemuSaid: String, consoleLog: String, keep: Bool) -> (exitCode: Int32, message: String?) {
        let state = state.withLock { $0 }
        if let error = state.error { return (error.code, error.message) }
        if let exit = state.exit {
            guard exit.oomKills > 0 else { return (exit.code, nil) }
            let who = exit.code == 137 ? "the command" : "\(exit.oomKills) process(es) of the command's"
            return (exit.code, "the guest ran out of memory and its kernel's OOM killer ended \(who) (--memory \(plan.memoryMiB)m); give the run more with --memory")
        }
        if state.ending == nil, plan.target == .x86_64, case .exited(let status) = termination, status > 1,
           let code = QEMUMachine.code(fromDebugExitStatus: status) {
            // No line from the init, but its exit code through isa-debug-exit.
            return (code, state.started == nil ? "the guest ended with status \(code) before the command started; run again with --console to see why" : nil)
        }
        switch state.ending {
        case .timedOut?:
            return (124, "the command did not finish within the --timeout; the VM was ended")
        case .stopKilled?:
            return (137, "the command did not stop within \(Elapsed.format(stopGrace)) of its stop signal; the VM was ended")
        case .interrupted?:
            return (130, "interrupted; the VM was ended")
        case .acceleratorFailed(let said)?:
            return (125, QEMUMessages.acceleratorError(said, stderr: qemuSaid).description)
        case nil:
            break
        }
        let status: String = switch termination {
        case .exited(let code): "status \(code)"
        case .signaled(let signal): "signal \(signal)"
        }
        let said = qemuSaid.split(separator: "\n").suffix(8).map { "  | " + $0 }
        let console = ((try? FileStore.readText(consoleLog)) ?? "").split(separator: "\n").suffix(12).map { "  | " + $0 }
        var lines = [connected ? "the VM ended (QEMU \(status)) before the command finished" : "QEMU ended (\(status)) before the run's channels were connected"]
        if !said.isEmpty { lines += ["QEMU said:"] + said }
        if !console.isEmpty { lines += ["last console lines:"] + console }
        lines.append(keep ? "the console log is \(consoleLog)" : "run again with --console to see the guest's console, or --keep to keep its log")
        return (125, lines.joined(separator: "\n"))
    }
}

/// Signal handlers for the length of a run; the defaults come back with `cancel`. The
/// handlers only write the signal's number into a pipe, which a thread reads and hands to the
/// current `handler`; until there is one, signals wait in a queue (a stop that arrives while
/// the VM starts is delivered once the init listens).
public final class SignalForwarding: Sendable {
    private let signals: [Int32]
    private let pipe: (read: Int32, write: Int32)
    private let state = Mutex<(handler: (@Sendable (Int32) -> Void)?, queued: [Int32])>((nil, []))

    public init(signals: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGWINCH]) {
        self.signals = signals
        var ends: [Int32] = [-1, -1]
        _ = vmf_pipe_cloexec(&ends)
        pipe = (ends[0], ends[1])
        _ = fcntl(ends[1], F_SETFL, O_NONBLOCK)
        _ = signals.withUnsafeBufferPointer { vmf_signals_to_pipe($0.baseAddress, Int32($0.count), ends[1]) }
        let reader = ends[0]
        Thread.detachNewThread { [self] in
            PipeReader.forEachChunk(reader) { bytes in
                for byte in bytes { deliver(Int32(byte)) }
                return true
            }
            close(reader)
        }
    }

    private func deliver(_ number: Int32) {
        let handler = state.withLock { state -> (@Sendable (Int32) -> Void)? in
            if state.handler == nil { state.queued.append(number) }
            return state.handler
        }
        handler?(number)
    }

    /// Hands signals to `handler` from now on, first those that waited.
    public func handle(_ handler: (@Sendable (Int32) -> Void)?) {
        let queued = state.withLock { state -> [Int32] in
            state.handler = handler
            defer { state.queued = [] }
            return handler == nil ? [] : state.queued
        }
        for number in queued { handler?(number) }
    }

    public func cancel() {
        signals.withUnsafeBufferPointer { vmf_signals_default($0.baseAddress, Int32($0.count)) }
        close(pipe.write)
    }
}
