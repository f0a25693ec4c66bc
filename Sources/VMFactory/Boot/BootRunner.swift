import Foundation
import Subprocess
import Synchronization
import SystemPackage

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

/// What the reading task and the timer share.
private final class RunState: Sendable {
    let lines = Mutex<[ConsoleLine]>([])
    let ending = Mutex<BootRun.Ending>(.exited)
}

/// Runs QEMU with its console on stdout, stamps every line as it arrives, and never lets a
/// guest hang the caller: after `timeout` (or when the task is cancelled, on Ctrl-C) QEMU's
/// process group gets SIGTERM, then SIGKILL.
public struct BootRunner: Sendable {
    public init() {}

    public func run(
        _ command: Command, timeout: Duration,
        onLine: (@Sendable (ConsoleLine) -> Void)? = nil,
        stop: (@Sendable (ConsoleLine) -> Bool)? = nil
    ) async throws -> BootRun {
        let state = RunState()
        let options = { () -> PlatformOptions in
            var options = PlatformOptions()
            options.processGroupID = 0
            options.teardownSequence = [
                .gracefulShutDown(toProcessGroup: true, allowedDurationToNextStep: .milliseconds(500)),
                .send(signal: .kill, toProcessGroup: true, allowedDurationToNextStep: .seconds(1)),
            ]
            return options
        }()
        let environment = Dictionary(uniqueKeysWithValues: command.environment.map { (Environment.Key(stringLiteral: $0.key), $0.value) })
        let executable: Executable = command.executable.contains("/") ? .path(FilePath(command.executable)) : .name(command.executable)
        let arguments = Arguments(command.arguments)
        let started = ContinuousClock.now

        typealias Outcome = (status: TerminationStatus, stderr: String)?
        let outcome: Outcome
        do {
            outcome = try await withThrowingTaskGroup(of: Outcome.self) { group in
                group.addTask {
                    let result = try await Subprocess.run(
                        executable, arguments: arguments, environment: .custom(environment), platformOptions: options,
                        input: .none, output: .sequence, error: .string(limit: 1 << 20)
                    ) { execution in
                        var pending: [UInt8] = []
                        func emit(_ bytes: ArraySlice<UInt8>) -> Bool {
                            var text = String(decoding: bytes, as: UTF8.self)
                            while text.hasSuffix("\r") { text.removeLast() }
                            let line = ConsoleLine(time: (ContinuousClock.now - started).seconds, text: text)
                            state.lines.withLock { $0.append(line) }
                            onLine?(line)
                            return stop?(line) ?? false
                        }
                        for try await buffer in execution.standardOutput {
                            buffer.withUnsafeBytes { pending.append(contentsOf: $0) }
                            while let newline = pending.firstIndex(of: 0x0a) {
                                let done = emit(pending[..<newline])
                                pending.removeSubrange(...newline)
                                if done {
                                    state.ending.withLock { $0 = .stopped }
                                    throw CancellationError()
                                }
                            }
                        }
                        if !pending.isEmpty { _ = emit(pending[...]) }
                    }
                    return (result.terminationStatus, result.standardError)
                }
                group.addTask {
                    try await Task.sleep(for: timeout)
                    state.ending.withLock { $0 = .timedOut }
                    return nil
                }
                let first = try await group.next()!
                group.cancelAll()
                return first
            }
        } catch is CancellationError where state.ending.withLock({ $0 }) == .stopped {
            outcome = nil
        } catch is CancellationError {
            throw VMFactoryError(.interrupted, "interrupted; QEMU was stopped")
        } catch {
            if Task.isCancelled { throw VMFactoryError(.interrupted, "interrupted; QEMU was stopped") }
            throw VMFactoryError(
                .missingTool, "cannot run \(command.executable): \(error)",
                hint: "run `vmfactory doctor` to see which host tools are missing", details: ["command: \(command)"]
            )
        }
        let seconds = (ContinuousClock.now - started).seconds
        let lines = state.lines.withLock { $0 }
        guard let outcome else {
            return BootRun(lines: lines, ending: state.ending.withLock { $0 }, status: nil, signal: nil, stderr: "", seconds: seconds)
        }
        var run = BootRun(lines: lines, ending: .exited, status: nil, signal: nil, stderr: outcome.stderr, seconds: seconds)
        switch outcome.status {
        case .exited(let code): run.status = Int32(code)
        case .signaled(let signal): run.signal = Int32(signal)
        }
        return run
    }
}
