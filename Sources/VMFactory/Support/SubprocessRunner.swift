import Foundation
import Subprocess
import SystemPackage

/// Runs commands for real. Each child gets its own process group, so that cancelling the
/// calling task (Ctrl-C) stops the child and everything it started: SIGTERM to the group,
/// then SIGKILL to the group after a grace period.
public struct SubprocessRunner: ProcessRunner {
    public var gracePeriod: Duration

    public init(gracePeriod: Duration = .seconds(3)) {
        self.gracePeriod = gracePeriod
    }

    public func run(_ command: Command, output: CommandOutput) async throws -> CommandResult {
        var options = PlatformOptions()
        options.processGroupID = 0
        options.teardownSequence = [
            .gracefulShutDown(toProcessGroup: true, allowedDurationToNextStep: gracePeriod),
            .send(signal: .kill, toProcessGroup: true, allowedDurationToNextStep: .seconds(1)),
        ]
        let executable: Executable = command.executable.contains("/") ? .path(FilePath(command.executable)) : .name(command.executable)
        var environment: [Environment.Key: String] = [:]
        for (key, value) in command.environment { environment[Environment.Key(stringLiteral: key)] = value }
        let workingDirectory = command.workingDirectory.map { FilePath($0) }

        do {
            switch output {
            case .capture:
                let result = try await Subprocess.run(
                    executable,
                    arguments: Arguments(command.arguments),
                    environment: .custom(environment),
                    workingDirectory: workingDirectory,
                    platformOptions: options,
                    output: .string(limit: 64 << 20),
                    error: .combinedWithOutput
                )
                try Task.checkCancellation()
                return CommandResult(termination: Self.termination(result.terminationStatus), output: result.standardOutput)
            case .logFile(let path):
                try FileStore.createDirectory(URL(fileURLWithPath: path).deletingLastPathComponent().path)
                let fd = try FileDescriptor.open(
                    FilePath(path), .writeOnly,
                    options: [.create, .append, .closeOnExec],
                    permissions: [.ownerReadWrite, .groupRead, .otherRead]
                )
                defer { try? fd.close() }
                let result = try await Subprocess.run(
                    executable,
                    arguments: Arguments(command.arguments),
                    environment: .custom(environment),
                    workingDirectory: workingDirectory,
                    platformOptions: options,
                    output: .fileDescriptor(fd, closeAfterSpawningProcess: false),
                    error: .combinedWithOutput
                )
                try Task.checkCancellation()
                return CommandResult(termination: Self.termination(result.terminationStatus), output: "")
            }
        } catch is CancellationError {
            throw VMFactoryError(.interrupted, "interrupted while running \(command.executable); the process was stopped")
        } catch let error as VMFactoryError {
            throw error
        } catch {
            if Task.isCancelled {
                throw VMFactoryError(.interrupted, "interrupted while running \(command.executable); the process was stopped")
            }
            throw VMFactoryError(
                .missingTool, "cannot run \(command.executable): \(error)",
                hint: "run `vmfactory doctor` to see which host tools are missing",
                details: ["command: \(command)"]
            )
        }
    }

    static func termination(_ status: TerminationStatus) -> CommandResult.Termination {
        switch status {
        case .exited(let code): return .exited(Int32(code))
        case .signaled(let signal): return .signaled(Int32(signal))
        }
    }
}
