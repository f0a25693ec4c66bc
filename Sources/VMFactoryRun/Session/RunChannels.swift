import CLinux
import Foundation
import Synchronization
import VMFactoryBoot
import VMFactoryCore
import VMFactoryLifecycle

/// The host's side of the run's channel (docs/run-protocol.md): it relays the command's stdout
/// and stderr to ours and our stdin to it, and turns what the init says (hello, started, exit,
/// error) and what happens on the host (signals, stops, timers, QEMU's exit) into events of the
/// run's state machine, whose actions (settings, signals, the end of the VM) it carries out.
/// One thread reads the
/// channel; the outputs are written by queues of their own, and the init gets room for more
/// output only once a write is done, so a slow stdout holds back the guest and never grows a
/// buffer here.
final class RunChannels: Sendable {
    /// Takes an exec stream's frames from the guest; nil once the VM has ended. Never blocks:
    /// the channel's reader calls it.
    typealias StreamHandler = @Sendable (RunProtocol.Frame?) -> Void

    private struct State {
        /// The run's life: every event goes through it (`post`).
        var machine: RunStateMachine
        var started: ContinuousClock.Instant?
        /// Bytes of stdin the init still takes before it grants more.
        var stdinCredit: UInt32 = RunProtocol.window
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
    private let state: Mutex<State>
    /// Frames go out whole: one writer at a time.
    private let sending = Mutex(())
    private let stdinRoom = DispatchSemaphore(value: 0)
    /// The exec streams open now, and the next stream number to give.
    private let streams = Mutex<(next: UInt32, handlers: [UInt32: StreamHandler], closed: Bool)>((RunProtocol.firstExecStream, [:], false))
    /// Called once the command has started.
    let onStarted: (@Sendable () -> Void)?
    /// Called once the VM is up and waits for `start` (with `waitsForStart`).
    let onBooted: (@Sendable () -> Void)?
    /// Saves the VM as its machine's template (pause, save, resume), when the init says
    /// hello; nil for a run that makes none. Returns why the VM cannot go on, if it cannot.
    let saveTemplate: (@Sendable () -> String?)?
    /// The save in progress: the session's end waits for it (it uses QEMU's monitor).
    private let saves = DispatchGroup()
    /// Signalled when the command started (or the channel ended): stdin goes only to a process.
    private let commandStarted = DispatchSemaphore(value: 0)
    private let readerEnded = DispatchSemaphore(value: 0)
    private let outputs = (stdout: DispatchQueue(label: "vmfactory.run.stdout"), stderr: DispatchQueue(label: "vmfactory.run.stderr"))
    /// What the reader answers goes out from here: the reader itself never waits on a write,
    /// or a writer blocked on a guest that is blocked writing to us would stop both.
    private let answers = DispatchQueue(label: "vmfactory.run.answers")

    init(
        plan: RunPlan, qemu: ChildProcess, channel: Int32, stdout: TextOutput, stderr: TextOutput, stopGrace: Duration, waitsForStart: Bool = false,
        saveTemplate: (@Sendable () -> String?)? = nil, onBooted: (@Sendable () -> Void)? = nil, onStarted: (@Sendable () -> Void)? = nil
    ) {
        self.saveTemplate = saveTemplate
        self.onStarted = onStarted
        self.onBooted = onBooted
        self.plan = plan
        self.qemu = qemu
        self.channel = channel
        self.stdout = stdout
        self.stderr = stderr
        self.stopGrace = stopGrace
        state = Mutex(State(machine: RunStateMachine(stopGrace: stopGrace, tty: plan.tty, waitsForStart: waitsForStart, makesTemplate: saveTemplate != nil)))
    }

    /// Moves the run's state machine and carries out what it says; returns that.
    @discardableResult
    func post(_ event: RunStateMachine.Event) -> [RunStateMachine.Action] {
        let actions = state.withLock { state in
            let actions = state.machine.handle(event)
            if actions.contains(.reportStarted) { state.started = .now }
            return actions
        }
        for action in actions { perform(action) }
        return actions
    }

    private func perform(_ action: RunStateMachine.Action) {
        switch action {
        case .sendSettings:
            let settings = plan.settingsFrame
            answers.async { [self] in send(settings) }
        case .saveTemplate:
            // Off the channel's reader: the monitor waits for QEMU, and frames keep coming.
            saves.enter()
            Thread.detachNewThread { [self] in
                defer { saves.leave() }
                if let failure = saveTemplate?() {
                    post(.protocolBroken(failure))
                } else {
                    post(.templateSaved)
                }
            }
        case .reportBooted:
            onBooted?()
        case .reportStarted:
            commandStarted.signal()
            onStarted?()
        case .sendSignal(let number):
            // From another queue: a guest that stopped reading blocks the write, never the
            // caller (the channel's reader, a signal handler, the end of the VM).
            answers.async { [self] in send(RunProtocol.Frame(.signal, stream: RunProtocol.commandStream, number: UInt32(number))) }
        case .sendWindowSize:
            guard let size = RawTerminal.size(of: STDIN_FILENO) else { return }
            let rows = UInt16(clamping: size.rows), cols = UInt16(clamping: size.cols)
            let frame = RunProtocol.Frame(.windowSize, stream: RunProtocol.commandStream, payload: [UInt8(rows >> 8), UInt8(rows & 0xff), UInt8(cols >> 8), UInt8(cols & 0xff)])
            answers.async { [self] in send(frame) }
        case .startStopTimer(let grace):
            DispatchQueue.global().asyncAfter(deadline: .now() + grace.timeInterval) { [self] in post(.stopGraceOver) }
        case .startDrainTimer(let reason, let drain):
            DispatchQueue.global().asyncAfter(deadline: .now() + drain.timeInterval) { [self] in post(.drainOver(reason)) }
        case .endVM:
            qemu.terminate(grace: .milliseconds(500))
        case .say(let text):
            stderr.writeLine("vmfactory: " + text)
        }
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
                post(.protocolBroken("the guest broke the run protocol (\(error)); the VM was ended"))
                return false
            }
        }
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
            return !post(.hello(frame.number)).contains(.endVM)
        case .taken where frame.stream == 0:
            // The clock as late as it can be: the init is reading now.
            answers.async { [self] in send(RunProtocol.Frame.clockNow()) }
            post(.settingsTaken)
        case .started where frame.stream == RunProtocol.commandStream:
            post(.started)
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
                post(.protocolBroken("the guest broke the run protocol (output beyond the room it was given); the VM was ended"))
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
                post(.protocolBroken("the guest's exit report is malformed; the VM was ended"))
                return false
            }
            post(.exited(report))
        case .error:
            guard let failure = RunProtocol.StartFailure(frame) else {
                post(.protocolBroken("the guest's error report is malformed; the VM was ended"))
                return false
            }
            post(.guestFailed(code: failure.code, message: failure.message))
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

    /// Whether the VM is being saved as a template now (pause and resume wait for it).
    var savingTemplate: Bool { state.withLock { $0.machine.savingTemplate } }
    /// Whether the init said it read the settings.
    var settingsTaken: Bool { state.withLock { $0.machine.settingsArrived } }

    /// When the init said the command started.
    var startedAfter: ContinuousClock.Instant? { state.withLock { $0.started } }

    /// Signals to vmfactory go to the state machine: SIGINT or SIGTERM stops the command (a
    /// second one ends the VM), SIGWINCH becomes the terminal's new size, others go to the
    /// command.
    func forwardSignals(_ forwarding: SignalForwarding) {
        forwarding.handle { [self] number in post(.signal(number)) }
    }

    /// Waits until the channel's reader has reached the end of what QEMU sent (QEMU has
    /// exited) and the outputs have written everything.
    func finish() async {
        let ended = readerEnded
        let outputs = outputs
        let saves = saves
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                _ = ended.wait(timeout: .now() + 10)
                // QEMU has exited: a save still asking its monitor hears so at once.
                saves.wait()
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
    func outcome(qemuSaid: String, consoleLog: String, keep: Bool) -> (exitCode: Int32, message: String?) {
        let events = state.withLock { $0.machine.events }
        let console = ((try? FileStore.readText(consoleLog)) ?? "").split(separator: "\n").suffix(12).map(String.init)
        return RunVerdict.decide(events, plan: plan, stopGrace: stopGrace, qemuSaid: qemuSaid, consoleTail: console, consoleLog: consoleLog, keep: keep)
    }
}
