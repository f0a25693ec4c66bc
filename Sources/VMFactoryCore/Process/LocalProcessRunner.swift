import Foundation

/// Runs commands for real, as `ChildProcess`es: each in a process group of its own, gone
/// when vmfactory goes, and stopped with its whole group when the calling task is cancelled
/// (Ctrl-C): SIGTERM, then SIGKILL after a grace period.
public struct LocalProcessRunner: ProcessRunner {
    /// The base environment every command's own variables are added to.
    public var baseEnvironment: [String: String]
    public var gracePeriod: Duration

    public init(hostEnvironment: [String: String], gracePeriod: Duration = .seconds(3)) {
        self.baseEnvironment = Command.baseEnvironment(from: hostEnvironment)
        self.gracePeriod = gracePeriod
    }

    public func run(_ command: Command, output: CommandOutput) async throws -> CommandResult {
        try Self.checkCancellation(command)
        let environment = command.environment(on: baseEnvironment)
        switch output {
        case .capture:
            let child = try await ChildProcess.spawn(command, environment: environment, stdout: .pipe, stderr: .sameAsStdout, parentDeathSignal: command.deathSignal)
            async let text = PipeReader.readAll(child.stdout!)
            let termination = await child.wait(stoppingOnCancel: gracePeriod)
            let captured = await text
            try Self.checkCancellation(command)
            return CommandResult(termination: termination, output: String(decoding: captured, as: UTF8.self))
        case .stdoutApart:
            let child = try await ChildProcess.spawn(command, environment: environment, stdout: .pipe, stderr: .pipe)
            async let text = PipeReader.readAll(child.stdout!)
            async let errors = PipeReader.readAll(child.stderr!, limit: 1 << 20)
            let termination = await child.wait(stoppingOnCancel: gracePeriod)
            let (captured, messages) = await (text, errors)
            try Self.checkCancellation(command)
            return CommandResult(termination: termination, output: String(decoding: captured, as: UTF8.self), errorOutput: String(decoding: messages, as: UTF8.self))
        case .logFile(let path):
            try FileStore.createDirectory(URL(fileURLWithPath: path).deletingLastPathComponent().path)
            let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            guard fd >= 0 else {
                throw VMFactoryError.io("cannot open the log file", path: path)
            }
            defer { close(fd) }
            let child = try await ChildProcess.spawn(command, environment: environment, stdout: .descriptor(fd), stderr: .descriptor(fd), parentDeathSignal: command.deathSignal)
            let termination = await child.wait(stoppingOnCancel: gracePeriod)
            try Self.checkCancellation(command)
            return CommandResult(termination: termination, output: "")
        }
    }

    static func checkCancellation(_ command: Command) throws {
        if Task.isCancelled {
            throw VMFactoryError(.interrupted, "interrupted while running \(command.executable); the process was stopped")
        }
    }
}
