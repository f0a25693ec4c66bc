import Foundation

/// A process to run, as a value: built by the steps, unit-tested as argv, run by a `ProcessRunner`.
public struct Command: Sendable, Hashable, CustomStringConvertible {
    public var executable: String
    public var arguments: [String]
    /// The variables this command sets. The runner adds them to its base environment (see
    /// `Command.baseEnvironment`), so nothing else of the user's shell reaches a child.
    public var environment: [String: String]
    public var workingDirectory: String?
    /// What the child gets when vmfactory ends before it (see `ChildProcess`): SIGKILL, or
    /// SIGTERM for a program that cleans up and stops its own children on it (make).
    public var deathSignal: Int32

    public init(_ executable: String, _ arguments: [String], environment: [String: String] = [:], workingDirectory: String? = nil, deathSignal: Int32 = SIGKILL) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.deathSignal = deathSignal
    }

    public var argv: [String] { [executable] + arguments }

    public var description: String {
        argv.map(Command.shellQuoted).joined(separator: " ")
    }

    /// The few host variables a child legitimately needs; variables such as ARCH,
    /// CROSS_COMPILE or KCONFIG_CONFIG in the user's shell must not leak into a build.
    public static func baseEnvironment(from host: [String: String]) -> [String: String] {
        var environment: [String: String] = [
            "PATH": host["PATH"] ?? "/usr/local/bin:/usr/bin:/bin",
            "LC_ALL": "C",
            "LANG": "C",
        ]
        for name in ["HOME", "TMPDIR", "USER", "LOGNAME"] {
            if let value = host[name] { environment[name] = value }
        }
        return environment
    }

    /// The complete environment of the child, on top of `base`.
    public func environment(on base: [String: String]) -> [String: String] {
        base.merging(environment) { $1 }
    }

    public static func shellQuoted(_ word: String) -> String {
        let safe = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%")
        if !word.isEmpty, word.allSatisfy({ safe.contains($0) }) { return word }
        return "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}

/// How a finished child ended.
public struct CommandResult: Sendable {
    public enum Termination: Sendable, Equatable, Codable {
        case exited(Int32)
        case signaled(Int32)
    }

    public var termination: Termination
    /// Captured stdout and stderr, interleaved (`.capture`), or stdout alone (`.stdoutApart`).
    public var output: String
    /// stderr, when captured apart from stdout.
    public var errorOutput: String

    public init(termination: Termination, output: String, errorOutput: String = "") {
        self.termination = termination
        self.output = output
        self.errorOutput = errorOutput
    }

    public var succeeded: Bool { termination == .exited(0) }

    public var statusDescription: String {
        switch termination {
        case .exited(let code): return "exit status \(code)"
        case .signaled(let signal): return "killed by signal \(signal)"
        }
    }
}

/// Where a child's stdout and stderr go.
public enum CommandOutput: Sendable {
    /// Kept in memory and returned in `CommandResult.output`.
    case capture
    /// stdout in `CommandResult.output` (a document the command prints), stderr in `errorOutput`.
    case stdoutApart
    /// Appended to a log file; the result's output is empty.
    case logFile(String)
}

/// The seam between deciding what to run and running it.
public protocol ProcessRunner: Sendable {
    func run(_ command: Command, output: CommandOutput) async throws -> CommandResult
}

extension ProcessRunner {
    /// Runs `command` and turns a failure into a `VMFactoryError` carrying argv, status,
    /// the tail of the output and where the whole log is.
    @discardableResult
    public func runChecked(_ command: Command, output: CommandOutput = .capture, what: String) async throws -> CommandResult {
        let result = try await run(command, output: output)
        guard result.succeeded else { throw result.failure(of: command, output: output, what: what) }
        return result
    }
}

extension CommandResult {
    /// The error for a child that failed: argv, status, the last 40 lines of its output and,
    /// when the output went to a log, where that log is.
    public func failure(of command: Command, output: CommandOutput, what: String) -> VMFactoryError {
        var details = ["command: \(command)"]
        var hint: String? = nil
        let text: String
        switch output {
        case .capture:
            text = self.output
        case .stdoutApart:
            text = errorOutput
        case .logFile(let path):
            text = (try? FileStore.readText(path)) ?? ""
            hint = "the full log is \(FileStore.displayPath(path))"
        }
        let tail = text.split(separator: "\n", omittingEmptySubsequences: false).suffix(40)
        if !tail.isEmpty { details.append("last lines of output:") }
        details += tail.map { "| " + $0 }
        return VMFactoryError(.processFailed, "\(what) failed (\(statusDescription))", hint: hint, details: details)
    }
}

/// A runner that refuses every command: the default of contexts that must run nothing, so
/// that a test or a code path that starts a process by mistake fails loudly.
public struct RefusingRunner: ProcessRunner {
    public init() {}

    public func run(_ command: Command, output: CommandOutput) async throws -> CommandResult {
        throw VMFactoryError(.internalError, "this context runs no processes, but was asked to run: \(command)")
    }
}
