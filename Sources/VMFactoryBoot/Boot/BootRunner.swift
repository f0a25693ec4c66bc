import Foundation
import Synchronization
import VMFactoryCore
import VMFactoryKernel

/// One console line, stamped on the host with a monotonic clock.
public struct ConsoleLine: Sendable, Codable, Hashable {
    /// Seconds since QEMU was spawned.
    public var time: Double
    public var text: String

    public init(time: Double, text: String) {
        self.time = time
        self.text = text
    }
}

/// How one QEMU run went.
public struct BootRun: Sendable, Codable {
    public enum Ending: String, Sendable, Codable {
        /// QEMU exited by itself.
        case exited
        /// The timeout ran out and QEMU was stopped.
        case timedOut = "timed-out"
        /// `stop` said the run had seen enough, and QEMU was stopped.
        case stopped
        /// QEMU said its accelerator stopped the guest for good, and QEMU was stopped.
        case acceleratorFailed = "accelerator-failed"
    }

    public var lines: [ConsoleLine]
    public var ending: Ending
    /// QEMU's exit status, when it exited by itself.
    public var status: Int32?
    public var signal: Int32?
    /// QEMU's own messages.
    public var stderr: String
    /// Seconds from the spawn until QEMU was gone.
    public var seconds: Double

    public var console: String { lines.map(\.text).joined(separator: "\n") }

    public func firstLine(containing text: String) -> ConsoleLine? {
        lines.first { $0.text.contains(text) }
    }
}

/// Runs QEMU with its console on stdout, stamps every line as it arrives, and never lets a
/// guest hang the caller: after `timeout`, when `stop` says the run has seen enough, or when
/// the task is cancelled (Ctrl-C), QEMU's process group gets SIGTERM, then SIGKILL. When QEMU
/// says that KVM stopped the guest (QEMU then waits, paused, for ever), it is stopped at once
/// and the run throws `acceleratorFailed`.
public struct BootRunner: Sendable {
    /// What QEMU's environment is made from (`Command.baseEnvironment`).
    public var baseEnvironment: [String: String]
    /// Between SIGTERM and SIGKILL.
    public var gracePeriod: Duration = .milliseconds(500)

    public func run(
        _ command: Command, timeout: Duration,
        onLine: (@Sendable (ConsoleLine) -> Void)? = nil,
        stop: (@Sendable (ConsoleLine) -> Bool)? = nil
    ) async throws -> BootRun {
        if Task.isCancelled { throw VMFactoryError(.interrupted, "interrupted; QEMU was not started") }
        let started = ContinuousClock.now
        let qemu = try await ChildProcess.spawn(command, environment: command.environment(on: baseEnvironment), stdout: .pipe, stderr: .pipe)
        let state = RunState()
        let grace = gracePeriod
        // The timer ends the run unless QEMU exits first.
        let timer = Task.detached {
            try await Task.sleep(for: timeout)
            if state.end(.timedOut) { qemu.terminate(grace: grace) }
        }
        async let stderr = PipeReader.readAll(qemu.stderr!, limit: 1 << 20) { line in
            if let said = QEMUMessages.acceleratorFailure(in: line), state.end(.acceleratorFailed) {
                state.acceleratorMessage.withLock { $0 = said }
                qemu.terminate(grace: grace)
            }
        }
        async let console: Void = PipeReader.readLines(qemu.stdout!) { text in
            let line = ConsoleLine(time: (ContinuousClock.now - started).seconds, text: text)
            state.lines.withLock { $0.append(line) }
            onLine?(line)
            if stop?(line) == true, state.end(.stopped) { qemu.terminate(grace: grace) }
            return true
        }
        let termination = await qemu.wait(stoppingOnCancel: grace)
        timer.cancel()
        _ = await console
        let messages = String(decoding: await stderr, as: UTF8.self)
        if Task.isCancelled { throw VMFactoryError(.interrupted, "interrupted; QEMU was stopped") }

        let seconds = (ContinuousClock.now - started).seconds
        let lines = state.lines.withLock { $0 }
        let ending = state.ending.withLock { $0 }
        if ending == .acceleratorFailed {
            throw QEMUMessages.acceleratorError(state.acceleratorMessage.withLock { $0 }, stderr: messages)
        }
        guard ending == .exited else {
            return BootRun(lines: lines, ending: ending, status: nil, signal: nil, stderr: messages, seconds: seconds)
        }
        var run = BootRun(lines: lines, ending: .exited, status: nil, signal: nil, stderr: messages, seconds: seconds)
        switch termination {
        case .exited(let code): run.status = code
        case .signaled(let signal): run.signal = signal
        }
        return run
    }
}

/// What the reading thread and the timer share.
private final class RunState: Sendable {
    let lines = Mutex<[ConsoleLine]>([])
    let ending = Mutex<BootRun.Ending>(.exited)
    /// QEMU's line, when it said that its accelerator stopped the guest.
    let acceleratorMessage = Mutex("")

    /// Records why the run ends, unless something else ended it first.
    func end(_ reason: BootRun.Ending) -> Bool {
        ending.withLock { ending in
            guard ending == .exited else { return false }
            ending = reason
            return true
        }
    }
}
