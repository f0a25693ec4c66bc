import CLinux
import Foundation
import Synchronization
import VMFactoryBoot
import VMFactoryCore
import VMFactoryLifecycle

/// The host's side of the run's channel (docs/run-protocol.md): it answers the init's hello
/// with the run's settings, relays the command's stdout and stderr to ours and our stdin to it,
/// forwards signals and window sizes, and learns how the command ended. One thread reads the
/// channel; the outputs are written by queues of their own, and the init gets room for more
/// output only once a write is done, so a slow stdout holds back the guest and never grows a
/// buffer here.
final class RunChannels: Sendable {
    enum Ending: Sendable {
        case timedOut
        /// vmfactory's own task was cancelled (in-process callers).
        case interrupted
        /// The command did not stop within the grace period after a stop.
        case stopKilled
        /// QEMU said that its accelerator stopped the guest for good (QEMU's line).
        case acceleratorFailed(String)
        /// `vmfactory rm -f`: the VM was ended on request.
        case removed
    }

    /// How long a guest that reported its command's exit has to end the machine before a
    /// timeout or a stop ends it anyway.
    static let drainAfterExit: Duration = .seconds(5)

    /// Takes an exec stream's frames from the guest; nil once the VM has ended. Never blocks:
    /// the channel's reader calls it.
    typealias StreamHandler = @Sendable (RunProtocol.Frame?) -> Void

    private struct State {
        var ending: Ending?
        var exit: RunProtocol.ExitReport?
        var failure: (code: Int32, message: String)?
        var started: ContinuousClock.Instant?
        /// Bytes of stdin the init still takes before it grants more.
        var stdinCredit: UInt32 = RunProtocol.window
        var stops = 0
        var readerDone = false
        /// The command's output received and not yet written (at most a window).
        var outstanding = 0
    }

    let plan: RunPlan
    let qemu: ChildProcess
    let stdout: TextOutput
    let stderr: TextOutput
    let stopGrace: Duration
    /// Our end of the channel's socket pair (QEMU has the other).
    let channel: Int32
    private let state = Mutex(State())
    /// Frames go out whole: one writer at a time.
    private let sending = Mutex(())
    private let stdinRoom = DispatchSemaphore(value: 0)
    /// The exec streams open now, and the next stream number to give.
    private let streams = Mutex<(next: UInt32, handlers: [UInt32: StreamHandler], closed: Bool)>((RunProtocol.firstExecStream, [:], false))
    /// Called once the command has started.
    let onStarted: (@Sendable () -> Void)?
    /// Signalled when the command started (or the channel ended): stdin goes only to a process.
    private let commandStarted = DispatchSemaphore(value: 0)
    private let readerEnded = DispatchSemaphore(value: 0)
    private let outputs = (stdout: DispatchQueue(label: "vmfactory.run.stdout"), stderr: DispatchQueue(label: "vmfactory.run.stderr"))
    /// What the reader answers goes out from here: the reader itself never waits on a write,
    /// or a writer blocked on a guest that is blocked writing to us would stop both.
    private let answers = DispatchQueue(label: "vmfactory.run.answers")

    init(plan: RunPlan, qemu: ChildProcess, channel: Int32, stdout: TextOutput, stderr: TextOutput, stopGrace: Duration, onStarted: (@Sendable () -> Void)? = nil) {
        self.onStarted = onStarted
        self.plan = plan
        self.qemu = qemu
        self.channel = channel
        self.stdout = stdout
        self.stderr = stderr
        self.stopGrace = stopGrace
    }

    /// Starts reading the channel (and feeding it our stdin with -i).
    func connect() {
        Thread.detachNewThread { [self] in
            read()
            state.withLock { $0.readerDone = true }
            let open = streams.withLock { streams in
                streams.closed = true
                defer { streams.handlers = [:] }
                return streams.handlers.values
            }
            for handler in open { handler(nil) }
            stdinRoom.signal()
            commandStarted.signal()
            readerEnded.signal()
        }
        if plan.interactive {
            Thread.detachNewThread { [self] in feedStdin() }
        }
    }

    func send(_ frame: RunProtocol.Frame) {
        let bytes = frame.encoded
        sending.withLock { _ in _ = bytes.withUnsafeBytes { SocketIO.writeAll(channel, $0) } }
    }

    private func read() {
        var decoder = RunProtocol.Decoder()
        PipeReader.forEachChunk(channel) { chunk in
            decoder.feed(chunk)
            do {
                while let frame = try decoder.next() {
                    guard handle(frame) else { return false }
                }
                return true
            } catch {
                fail("the guest broke the run protocol (\(error)); the VM was ended")
                return false
            }
        }
    }

    /// Ends the run for something the guest did: its message wins over how QEMU ended.
    func fail(_ message: String) {
        state.withLock { state in
            if state.failure == nil { state.failure = (125, message) }
        }
        end(nil)
    }

    /// A new exec stream whose frames go to `handler`; nil when the VM has ended.
    func openStream(_ handler: @escaping StreamHandler) -> UInt32? {
        streams.withLock { streams in
            guard !streams.closed else { return nil }
            let stream = streams.next
            streams.next = streams.next == .max ? RunProtocol.firstExecStream : streams.next + 1
            streams.handlers[stream] = handler
            return stream
        }
    }

    /// Acts on one of the init's frames; false once the channel is done with.
    private func handle(_ frame: RunProtocol.Frame) -> Bool {
        if frame.stream >= RunProtocol.firstExecStream {
            // An exec's: to whoever asked for it, and its stream is done after its exit or error.
            let handler = streams.withLock { streams in
                defer { if frame.type == .exit || frame.type == .error { streams.handlers[frame.stream] = nil } }
                return streams.handlers[frame.stream]
            }
            handler?(frame)
            return true
        }
        switch frame.type {
        case .hello:
            guard let version = frame.number else {
                fail("the guest's hello says no version; the VM was ended")
                return false
            }
            guard version == RunProtocol.version else {
                fail("the initrd speaks run protocol version \(version), and this vmfactory speaks version \(RunProtocol.version); build the kernel and initrd with this vmfactory (vmfactory build --recipe container), or use the vmfactory that made them")
                return false
            }
            let settings = plan.settingsFrame
            answers.async { [self] in send(settings) }
        case .started where frame.stream == RunProtocol.commandStream:
            // Once: a guest that says it again changes nothing.
            let first = state.withLock { state -> Bool in
                defer { if state.started == nil { state.started = .now } }
                return state.started == nil
            }
            guard first else { return true }
            commandStarted.signal()
            onStarted?()
        case .stdout where frame.stream == RunProtocol.commandStream, .stderr where frame.stream == RunProtocol.commandStream:
            let (queue, output) = frame.type == .stdout ? (outputs.stdout, stdout) : (outputs.stderr, stderr)
            let count = frame.payload.count
            // The guest may have at most a window of output in flight: beyond it, it is not
            // following the protocol, and nothing of it is queued here.
            let within = state.withLock { state -> Bool in
                state.outstanding += count
                return state.outstanding <= Int(RunProtocol.window)
            }
            guard within else {
                fail("the guest broke the run protocol (output beyond the room it was given); the VM was ended")
                return false
            }
            let data = Data(frame.payload)
            queue.async { [self] in
                output.write(data)
                state.withLock { $0.outstanding -= count }
                send(RunProtocol.Frame(.credit, stream: frame.stream, number: UInt32(count)))
            }
        case .credit where frame.stream == RunProtocol.commandStream:
            guard let more = frame.number else { return true }
            state.withLock { $0.stdinCredit = $0.stdinCredit.addingReportingOverflow(more).overflow ? .max : $0.stdinCredit + more }
            stdinRoom.signal()
        case .exit where frame.stream == RunProtocol.commandStream:
            guard let report = RunProtocol.ExitReport(frame.payload) else {
                fail("the guest's exit report is malformed; the VM was ended")
                return false
            }
            state.withLock { $0.exit = report }
        case .error:
            guard let failure = RunProtocol.StartFailure(frame) else {
                fail("the guest's error report is malformed; the VM was ended")
                return false
            }
            state.withLock { state in
                if state.failure == nil { state.failure = (failure.code, failure.message) }
            }
        case .end:
            // Every frame the init sent is here (the channel keeps their order): it may end the
            // machine.
            answers.async { [self] in send(RunProtocol.Frame(.bye)) }
        default:
            // Frames of streams this run did not open: nothing to do with them.
            break
        }
        return true
    }

    /// Our stdin to the command, in frames of at most the room the init granted; an empty frame
    /// at its end (which closes the command's stdin; a terminal stays open).
    private func feedStdin() {
        commandStarted.wait()
        guard !state.withLock({ $0.readerDone }) else { return }
        PipeReader.forEachChunk(STDIN_FILENO) { chunk in
            var offset = 0
            while offset < chunk.count {
                let room = state.withLock { state -> Int in
                    let take = min(Int(state.stdinCredit), RunProtocol.largestData, chunk.count - offset)
                    state.stdinCredit -= UInt32(take)
                    return state.readerDone ? -1 : take
                }
                if room < 0 { return false }
                if room == 0 {
                    stdinRoom.wait()
                    continue
                }
                send(RunProtocol.Frame(.stdin, stream: RunProtocol.commandStream, payload: Array(chunk[offset..<(offset + room)])))
                offset += room
            }
            return true
        }
        send(RunProtocol.Frame(.stdin, stream: RunProtocol.commandStream))
    }

    /// When the init said the command started.
    var startedAfter: ContinuousClock.Instant? { state.withLock { $0.started } }

    /// Ends the VM for `reason` (nil: QEMU failed to connect), unless something ended it first.
    func end(_ reason: Ending?, evenAfterExit: Bool = false) {
        if let reason {
            let decision = state.withLock { state -> (first: Bool, afterExit: Bool) in
                guard state.ending == nil else { return (false, false) }
                // Once the command has ended, the machine ends by itself as soon as its last
                // output is here: a timeout or a grace period ending then would cut that off.
                // A guest that reported an exit and never ends is ended all the same, a little later.
                if state.exit != nil && !evenAfterExit { return (true, true) }
                state.ending = reason
                return (true, false)
            }
            guard decision.first else { return }
            if decision.afterExit {
                DispatchQueue.global().asyncAfter(deadline: .now() + Self.drainAfterExit.timeInterval) { [self] in
                    guard !qemu.hasExited else { return }
                    state.withLock { if $0.ending == nil { $0.ending = reason } }
                    qemu.terminate(grace: .milliseconds(500))
                }
                return
            }
        }
        qemu.terminate(grace: .milliseconds(500))
    }

    /// The command's stop signal (the init turns SIGTERM into the image's StopSignal), and the
    /// end of the VM after `grace` unless it ended first.
    func stop(grace: Duration) {
        // The timer first, and the frame from another queue: a guest that stopped reading
        // blocks the write, never the end of the VM nor the next Ctrl-C.
        DispatchQueue.global().asyncAfter(deadline: .now() + grace.timeInterval) { [self] in
            if !qemu.hasExited { end(.stopKilled) }
        }
        answers.async { [self] in send(RunProtocol.Frame(.signal, stream: RunProtocol.commandStream, number: UInt32(SIGTERM))) }
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
                stop(grace: stopGrace)
            case SIGWINCH:
                if plan.tty, let size = RawTerminal.size(of: STDIN_FILENO) {
                    let rows = UInt16(clamping: size.rows), cols = UInt16(clamping: size.cols)
                    let frame = RunProtocol.Frame(.windowSize, stream: RunProtocol.commandStream, payload: [UInt8(rows >> 8), UInt8(rows & 0xff), UInt8(cols >> 8), UInt8(cols & 0xff)])
                    answers.async { [self] in send(frame) }
                }
            default:
                answers.async { [self] in send(RunProtocol.Frame(.signal, stream: RunProtocol.commandStream, number: UInt32(number))) }
            }
        }
    }

    /// Waits until the channel's reader has reached the end of what QEMU sent (QEMU has
    /// exited) and the outputs have written everything.
    func finish() async {
        let ended = readerEnded
        let outputs = outputs
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                _ = ended.wait(timeout: .now() + 10)
                outputs.stdout.sync {}
                outputs.stderr.sync {}
                continuation.resume()
            }
        }
        // Shut down, not closed: the stdin feeder may still be blocked on it, and no descriptor
        // number is reused under it.
        shutdown(channel, Int32(SHUT_RDWR))
    }

    /// The exit status, and what to say when it is vmfactory's, not the command's.
    func outcome(connected: Bool, termination: CommandResult.Termination, qemuSaid: String, consoleLog: String, keep: Bool) -> (exitCode: Int32, message: String?) {
        let state = state.withLock { $0 }
        let events = RunVerdict.Events(
            ending: state.ending, exit: state.exit, failure: state.failure.map { RunVerdict.Failure(code: $0.code, message: $0.message) },
            started: state.started != nil, connected: connected, termination: termination
        )
        let console = ((try? FileStore.readText(consoleLog)) ?? "").split(separator: "\n").suffix(12).map(String.init)
        return RunVerdict.decide(events, plan: plan, stopGrace: stopGrace, qemuSaid: qemuSaid, consoleTail: console, consoleLog: consoleLog, keep: keep)
    }
}
