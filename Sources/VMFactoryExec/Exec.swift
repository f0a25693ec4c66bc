import ArgumentParser
import Foundation
import VMFactoryCore
import VMFactoryLifecycle

/// Where the lifecycle commands find the runs: the cache's `runs/` folder.
public struct RunsLocation: ParsableArguments {
    public init() {}

    @Option(help: "The cache the runs are in (default: $XDG_CACHE_HOME/vmfactory or ~/.cache/vmfactory).")
    public var cacheDir: String?

    public func registry(_ context: CommandContext) -> RunRegistry {
        let cache = CacheFolder.path(given: cacheDir, environment: context.environment, currentDirectory: context.currentDirectory)
        return RunRegistry(folders: RunFolders(cacheDirectory: cache))
    }
}

public struct Exec: AsyncParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        abstract: "Run a command inside a running VM, as docker exec does.",
        usage: "vmfactory exec [OPTIONS] RUN COMMAND [ARG...]",
        discussion: """
            The command runs in the VM's container root with the run's environment (the image's, then the run's \
            -e) plus these -e, as the run's user in its working directory unless -u and -w say otherwise. The exit \
            status is the command's (128+N for a signal); 126 and 127 when it cannot be run or is not found; 125 \
            when vmfactory failed (the run is not running, for one). It ends with the run's command, as under docker.
            """
    )

    @OptionGroup var location: RunsLocation

    @Flag(name: [.customShort("i"), .long], help: "Stream stdin to the command; its end is the command's end of file.")
    var interactive = false

    @Flag(name: [.customShort("t"), .long], help: "Give the command a pseudo-terminal.")
    var tty = false

    @Flag(name: [.customShort("d"), .long], help: "Start the command and return; its output is dropped.")
    var detach = false

    @Option(name: [.customShort("e"), .long], help: "NAME=VALUE, or NAME to pass vmfactory's own value (repeatable).")
    var env: [String] = []

    @Option(help: "A file of NAME=VALUE lines (# comments), read before -e (repeatable).")
    var envFile: [String] = []

    @Option(name: [.customShort("w"), .long], help: "The working directory (default: the run's).")
    var workdir: String?

    @Option(name: [.customShort("u"), .long], help: "USER[:GROUP] (default: the run's user).")
    var user: String?

    @Argument(help: "The run: its id, a unique start of it, or its name.")
    var run: String

    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments.")
    var command: [String] = []

    public func validate() throws {
        if command.isEmpty { throw ValidationError("exec needs a command to run") }
        if detach && (interactive || tty) { throw ValidationError("-d cannot be used with -i or -t") }
        if let workdir, !workdir.hasPrefix("/") { throw ValidationError("-w \(workdir) is not an absolute path") }
        if (command + [workdir ?? "", user ?? ""]).contains(where: { $0.contains("\0") }) { throw ValidationError("an argument holds a NUL byte") }
    }

    public func run() async throws {
        let context = CommandContext.current
        do {
            try await execute(context)
        } catch let exit as ExitCode {
            throw exit
        } catch {
            // As run's: vmfactory's own failure, apart from the command's statuses.
            context.stderr.writeLine("vmfactory: error: " + VMFactoryError(error).description)
            throw ExitCode(125)
        }
    }

    func execute(_ context: CommandContext) async throws {
        let entry = try location.registry(context).find(run)
        var exec = RunClient.Exec(argv: command)
        let files = try envFile.map { name in
            let path = FileStore.absolute(name, relativeTo: context.currentDirectory)
            guard let text = try? FileStore.readText(path) else {
                throw VMFactoryError(.notFound, "--env-file \(name): cannot read \(path)", hint: "check the path")
            }
            return (name, text)
        }
        exec.environment = try EnvironmentList.exec(files: files, entries: env, hostEnvironment: context.environment)
        exec.user = user
        exec.workdir = workdir
        exec.interactive = interactive
        exec.tty = tty
        exec.detach = detach
        if tty { exec.windowSize = RawTerminal.size(of: STDIN_FILENO) ?? (24, 80) }
        let signals = context.handlesSignals && tty ? SignalForwarding(signals: [SIGWINCH]) : nil
        defer { signals?.cancel() }
        if context.handlesSignals { signal(SIGPIPE, SIG_IGN) }
        let code = try RunClient.exec(entry, exec, stdout: context.stdout, stderr: context.stderr, signals: signals)
        if code != 0 { throw ExitCode(code) }
    }
}

/// `vmfactory exec` in the small executable: no image or kernel code, so that it starts in a
/// few milliseconds (the full command line loads about 60 shared libraries).
public enum ExecMain {
    /// Parses `arguments` (after the executable's name, "exec" first) and runs the exec; exits
    /// with its status.
    public static func run(_ arguments: [String]) async -> Never {
        do {
            var command = try Exec.parseAsRoot(Array(arguments.dropFirst()))
            if var asynchronous = command as? any AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
            exit(0)
        } catch {
            Exec.exit(withError: error)
        }
    }
}
