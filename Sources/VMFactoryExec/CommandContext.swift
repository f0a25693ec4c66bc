import ArgumentParser
import Foundation
import VMFactoryCore

/// What a command runs with: the environment and current folder it reads, where its output
/// goes, and how it runs processes. The executable uses the process's own; tests give their
/// own, so that nothing of the host (a `SOURCE_DATE_EPOCH`, a `VMFACTORY_HOME`) leaks in by
/// accident.
public struct CommandContext: Sendable {
    public var environment: [String: String]
    public var currentDirectory: String
    /// Where the recipe library is looked for first (the checkout the binary was built in).
    public var executablePath: String
    public var stdout: TextOutput
    public var stderr: TextOutput
    public var runner: any ProcessRunner
    /// SIGINT and SIGTERM cancel the command. Only the real process installs handlers.
    public var handlesSignals: Bool
    /// The command line as given (after the executable's name), for a command that starts
    /// vmfactory again with it (`run -d` starts the run's supervisor so).
    public var arguments: [String] = []

    public init(
        environment: [String: String], currentDirectory: String, executablePath: String,
        stdout: TextOutput, stderr: TextOutput, runner: any ProcessRunner, handlesSignals: Bool
    ) {
        self.environment = environment
        self.currentDirectory = currentDirectory
        self.executablePath = executablePath
        self.stdout = stdout
        self.stderr = stderr
        self.runner = runner
        self.handlesSignals = handlesSignals
    }

    /// The running process's environment, folder, streams and a real process runner.
    public static var process: CommandContext {
        let environment = ProcessInfo.processInfo.environment
        return CommandContext(
            environment: environment, currentDirectory: FileManager.default.currentDirectoryPath,
            executablePath: CommandLine.arguments.first ?? "", stdout: .standardOutput, stderr: .standardError,
            runner: LocalProcessRunner(hostEnvironment: environment), handlesSignals: true
        )
    }

    /// The context the command being run sees.
    @TaskLocal public static var current: CommandContext = .process
}
