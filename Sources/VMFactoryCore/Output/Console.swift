import Foundation
import Synchronization

/// Human-facing output. Everything goes to stderr, so that stdout stays machine-readable
/// under `--format json`. On a terminal, progress is one line redrawn in place; otherwise
/// it is a plain line every few seconds, which reads well in CI logs.
public final class Console: Sendable {
    public enum Verbosity: Int, Sendable, Comparable {
        case quiet, normal, verbose
        public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
    }

    public let verbosity: Verbosity
    public let isTerminal: Bool
    private let output: TextOutput
    private let plainInterval: Duration
    private struct State {
        var lineOpen = false
        var lastPlain: ContinuousClock.Instant? = nil
        var lastDraw: ContinuousClock.Instant? = nil
        var captured: [String] = []
    }
    private let state = Mutex(State())
    private let capture: Bool

    public init(verbosity: Verbosity = .normal, output: TextOutput = .standardError, plainInterval: Duration = .seconds(5)) {
        self.verbosity = verbosity
        self.output = output
        self.isTerminal = output.isTerminal
        self.plainInterval = plainInterval
        self.capture = false
    }

    private init(capturing: Bool) {
        self.verbosity = .verbose
        self.output = .memory()
        self.isTerminal = false
        self.plainInterval = .zero
        self.capture = capturing
    }

    /// A console that records lines instead of printing them (for tests).
    public static func recording() -> Console { Console(capturing: true) }

    public var recordedLines: [String] { state.withLock { $0.captured } }

    public func info(_ message: String) {
        guard verbosity >= .normal else { return }
        emit(message)
    }

    public func note(_ message: String) {
        guard verbosity >= .normal else { return }
        emit("note: " + message)
    }

    public func warning(_ message: String) {
        emit("warning: " + message)
    }

    public func debug(_ message: String) {
        guard verbosity >= .verbose else { return }
        emit("debug: " + message)
    }

    /// Reports progress of a long step. `force` prints even inside the throttle window
    /// (used for the first and last report of a step).
    public func progress(_ message: String, force: Bool = false) {
        guard verbosity >= .normal else { return }
        let now = ContinuousClock.now
        state.withLock { state in
            if capture {
                state.captured.append(message)
                return
            }
            if isTerminal {
                if !force, let last = state.lastDraw, now - last < .milliseconds(100) { return }
                state.lastDraw = now
                let width = 120
                let line = message.count > width ? String(message.prefix(width - 1)) + "…" : message
                output.write("\r\u{1B}[K" + line)
                state.lineOpen = true
            } else {
                if !force, let last = state.lastPlain, now - last < plainInterval { return }
                state.lastPlain = now
                output.writeLine(message)
            }
        }
    }

    /// Ends an in-place progress line so the next message starts on a fresh line.
    public func endProgress() {
        state.withLock { state in
            state.lastPlain = nil
            if state.lineOpen {
                output.write("\n")
                state.lineOpen = false
            }
        }
    }

    private func emit(_ line: String) {
        state.withLock { state in
            if capture {
                state.captured.append(line)
                return
            }
            if state.lineOpen {
                output.write("\r\u{1B}[K")
                state.lineOpen = false
            }
            output.writeLine(line)
        }
    }
}
