import Foundation
import Synchronization
import VMFactoryArchive
import VMFactoryCore

/// Follows a make log as it grows and reports `[n/N]` from kbuild's one-line-per-step
/// output (`  CC      kernel/fork.o`). N is an estimate: the step count of the last full
/// build of this build directory, or a typical figure for the target.
public final class BuildProgress: Sendable {
    public let logFile: String
    public let estimate: Int?
    private struct State {
        var offset: UInt64 = 0
        var steps = 0
        var lastStep = ""
        var partialLine = ""
    }
    private let state = Mutex(State())

    public init(logFile: String, estimate: Int?) {
        self.logFile = logFile
        self.estimate = estimate
    }

    public var steps: Int { state.withLock { $0.steps } }

    /// True for the lines kbuild prints for each step it runs (quiet mode).
    public static func isStep(_ line: Substring) -> Bool {
        guard line.hasPrefix("  "), let first = line.dropFirst(2).first, first.isUppercase else { return false }
        let tag = line.dropFirst(2).prefix { !$0.isWhitespace }
        guard tag.count <= 10, tag.allSatisfy({ $0.isUppercase || $0.isNumber || $0 == "_" || $0 == "-" }) else { return false }
        let rest = line.dropFirst(2 + tag.count)
        return rest.first == " " && rest.contains { !$0.isWhitespace }
    }

    /// Reads what was appended to the log since the last call.
    public func poll() {
        guard let handle = FileHandle(forReadingAtPath: logFile) else { return }
        defer { try? handle.close() }
        state.withLock { state in
            try? handle.seek(toOffset: state.offset)
            guard let data = try? handle.readToEnd(), !data.isEmpty else { return }
            state.offset += UInt64(data.count)
            let text = state.partialLine + String(decoding: data, as: UTF8.self)
            var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            state.partialLine = String(lines.removeLast())
            for line in lines where Self.isStep(line) {
                state.steps += 1
                state.lastStep = line.split(whereSeparator: { $0 == " " }).joined(separator: " ")
            }
        }
    }

    /// `[312/~1450] CC kernel/fork.o`
    public var summary: String {
        state.withLock { state in
            let count: String
            if let estimate, estimate > 0 {
                count = "[\(state.steps)/~\(max(estimate, state.steps))]"
            } else {
                count = "[\(state.steps)]"
            }
            return state.lastStep.isEmpty ? count : "\(count) \(state.lastStep)"
        }
    }

    /// Polls every `interval` and hands each summary to `report` until cancelled.
    public func follow(every interval: Duration = .milliseconds(500), report: @escaping @Sendable (String) -> Void) -> Task<Void, Never> {
        Task.detached { [self] in
            while !Task.isCancelled {
                poll()
                report(summary)
                try? await Task.sleep(for: interval)
            }
        }
    }
}
