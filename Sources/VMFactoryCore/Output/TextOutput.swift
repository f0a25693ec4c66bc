import Foundation
import Synchronization

/// Where a command's text goes: the process's stdout or stderr, written unbuffered so that
/// every line is out as soon as it is written (also into a pipe or a file), or memory (tests).
public final class TextOutput: Sendable {
    private enum Target {
        case descriptor(Int32)
        case memory
        case sink(@Sendable (Data) -> Void)
    }

    private let target: Target
    private let captured = Mutex(Data())
    /// Whether the output is a terminal (progress is then redrawn in place).
    public let isTerminal: Bool

    private init(target: Target, isTerminal: Bool) {
        self.target = target
        self.isTerminal = isTerminal
    }

    public static let standardOutput = TextOutput(target: .descriptor(STDOUT_FILENO), isTerminal: isatty(STDOUT_FILENO) == 1)
    public static let standardError = TextOutput(target: .descriptor(STDERR_FILENO), isTerminal: isatty(STDERR_FILENO) == 1)

    /// Keeps what is written, for `text`.
    public static func memory(isTerminal: Bool = false) -> TextOutput { TextOutput(target: .memory, isTerminal: isTerminal) }

    /// Hands what is written to `body` (a log, a connection).
    public static func sink(_ body: @escaping @Sendable (Data) -> Void) -> TextOutput { TextOutput(target: .sink(body), isTerminal: false) }

    public func write(_ data: Data) {
        switch target {
        case .memory:
            captured.withLock { $0.append(data) }
        case .sink(let body):
            body(data)
        case .descriptor(let fd):
            data.withUnsafeBytes { bytes in
                // A closed pipe (`| head`) is not vmfactory's failure: stop writing quietly.
                try? FileStore.writeAll(fd, bytes, path: fd == STDOUT_FILENO ? "stdout" : "stderr")
            }
        }
    }

    public func write(_ text: String) { write(Data(text.utf8)) }

    /// Writes `line` and a newline in one write.
    public func writeLine(_ line: String) { write(line + "\n") }

    /// Everything written so far (memory outputs only).
    public var text: String { captured.withLock { String(decoding: $0, as: UTF8.self) } }
}
