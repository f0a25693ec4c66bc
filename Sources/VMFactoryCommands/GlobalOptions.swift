import ArgumentParser
import Foundation
import VMFactoryBoot
import VMFactoryCore
import VMFactoryExec
import VMFactoryKernel

/// The folders, sources and verbosity every command works with; `run` spells them without
/// the short -v and -q, which are docker's there.
protocol WorkspaceSettings {
    var cacheDir: String? { get }
    var outputDir: String? { get }
    var sourceDirs: [String] { get }
    var offline: Bool { get }
    var verbose: Bool { get }
    var quiet: Bool { get }
}

extension WorkspaceSettings {
    func console(_ context: CommandContext) -> Console {
        Console(verbosity: quiet ? .quiet : verbose ? .verbose : .normal, output: context.stderr)
    }

    /// The cache folder, for the commands that need no recipe library.
    func cacheDirectory(_ context: CommandContext) -> String {
        Workspace.cacheDirectory(given: cacheDir, environment: context.environment, currentDirectory: context.currentDirectory)
    }

    func makeFactory(_ context: CommandContext, console: Console) throws -> Factory {
        let library = try Library.locate(environment: context.environment, executablePath: context.executablePath, currentDirectory: context.currentDirectory)
        let workspace = Workspace(
            library: library, cacheDirectory: cacheDir, outputDirectory: outputDir, sourceDirs: sourceDirs, offline: offline,
            environment: context.environment, currentDirectory: context.currentDirectory
        )
        return Factory(workspace: workspace, runner: context.runner, console: console)
    }
}

struct GlobalOptions: ParsableArguments, WorkspaceSettings {
    @Option(help: "Cache for sources, source trees and build directories (default: $XDG_CACHE_HOME/vmfactory or ~/.cache/vmfactory).")
    var cacheDir: String?

    @Option(help: "Folder that receives outputs/<recipe>/<target>/ (default: outputs/ of the vmfactory checkout).")
    var outputDir: String?

    @Option(name: .customLong("source-dir"), help: "Folder searched for source files by sha256 (repeatable; also $VMFACTORY_SOURCE_PATH, colon-separated).")
    var sourceDirs: [String] = []

    @Flag(help: "Never ask apt or the network for sources.")
    var offline = false

    @Flag(name: .shortAndLong, help: "Print more detail.")
    var verbose = false

    @Flag(name: .shortAndLong, help: "Print only warnings and errors.")
    var quiet = false

    @Option(help: "Output on stdout: text, or json for scripts (progress always goes to stderr).")
    var format: OutputFormat = .text

    func validate() throws {
        if verbose && quiet { throw ValidationError("--verbose and --quiet cannot be used together") }
        for dir in sourceDirs where dir.isEmpty { throw ValidationError("--source-dir needs a folder") }
    }



    /// Runs a command's work on the recipe library (see `perform`).
    func run(_ body: @escaping @Sendable (Factory) async throws -> Output) async throws {
        try await perform { context, console in
            try await body(try makeFactory(context, console: console))
        }
    }

    /// The one boundary of every command: Ctrl-C and SIGTERM cancel the work (stopping every
    /// child), the result goes to stdout as text or JSON, and every error becomes a
    /// `VMFactoryError` printed as text on stderr or as JSON on stdout.
    func perform(_ body: @escaping @Sendable (CommandContext, Console) async throws -> Output) async throws {
        let context = CommandContext.current
        let console = console(context)
        let format = self.format
        do {
            let work: @Sendable () async throws -> Output = { try await body(context, console) }
            let output = try await context.handlesSignals ? Interrupts.cancellingOnSignals(work) : work()
            console.endProgress()
            switch format {
            case .text: if !output.text.isEmpty { context.stdout.writeLine(output.text) }
            case .json: context.stdout.writeLine(try output.json())
            }
            if let code = output.exitCode, code != 0 { throw ExitCode(code) }
            if output.failed { throw ExitCode(1) }
        } catch let exit as ExitCode {
            throw exit
        } catch {
            console.endProgress()
            let failure = VMFactoryError(error)
            report(failure, to: context)
            throw ExitCode(failure.code == .interrupted ? 130 : 1)
        }
    }

    func report(_ error: VMFactoryError, to context: CommandContext) {
        switch format {
        case .text:
            context.stderr.writeLine("error: " + error.description)
        case .json:
            let payload = ErrorPayload(error: .init(code: error.code.rawValue, message: error.message, hint: error.hint, details: error.details))
            // An error payload is strings only; if even that cannot be encoded, say so in text.
            context.stdout.writeLine((try? JSON.encodeText(payload)) ?? #"{"error": {"code": "internal", "message": "cannot encode the error"}}"#)
        }
    }
}

/// What a command prints: text for people, JSON for scripts, and whether it counts as failed.
struct Output: Sendable {
    var text: String
    /// Encodes the value when JSON is asked for; an encoding failure is an error, never `{}`.
    var json: @Sendable () throws -> String
    var failed = false
    /// The process's exit status on success, when it is not 0 (`boot` passes the guest's on).
    var exitCode: Int32? = nil

    init<T: Encodable & Sendable>(text: String, value: T, failed: Bool = false, exitCode: Int32? = nil) {
        self.text = text
        self.json = { try JSON.encodeText(value) }
        self.failed = failed
        self.exitCode = exitCode
    }
}

struct ErrorPayload: Encodable {
    struct Body: Encodable {
        var code: String
        var message: String
        var hint: String?
        var details: [String]
    }
    var error: Body
}
