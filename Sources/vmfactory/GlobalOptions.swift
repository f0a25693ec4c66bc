import ArgumentParser
import Foundation
import VMFactory

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

/// `--target x86_64|s390x|all`.
enum TargetSelection: String, ExpressibleByArgument, CaseIterable {
    case x86_64, s390x, all

    func resolve(in recipe: Recipe) throws -> [Target] {
        switch self {
        case .all: return recipe.targets.map(\.target)
        case .x86_64, .s390x:
            let target = Target(rawValue: rawValue)!
            guard recipe.target(target) != nil else {
                throw VMFactoryError(.invalidArgument, "recipe \(recipe.name) has no target \(target)", hint: "its targets: \(recipe.targets.map(\.target.rawValue).joined(separator: ", "))")
            }
            return [target]
        }
    }
}

/// `--target x86_64|s390x` for the commands that boot one machine.
enum SingleTarget: String, ExpressibleByArgument, CaseIterable {
    case x86_64, s390x
    var target: Target { Target(rawValue: rawValue)! }
}

/// A duration written as `60s`, `500ms`, `2m` or a number of seconds.
struct DurationArgument: ExpressibleByArgument {
    var duration: Duration

    init?(argument: String) {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60)]
        var text = argument
        var scale = 1.0
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            text.removeLast(suffix.count)
            scale = factor
            break
        }
        guard let value = Double(text), value > 0, value.isFinite else { return nil }
        duration = .milliseconds(Int64((value * scale * 1000).rounded()))
    }

    static var defaultCompletionKind: CompletionKind { .default }
}

/// How a guest is booted: the options `boot` and `bench` share.
struct MachineOptions: ParsableArguments {
    @Option(help: "A kernel image to boot instead of the recipe's built one.")
    var kernel: String?

    @Option(help: "An initrd to boot instead of the recipe's built one.")
    var initrd: String?

    @Flag(help: "Boot the kernel without an initrd; it ends in the VFS panic (the kernel-only measurement).")
    var noInitrd = false

    @Option(help: "Words added to the kernel command line (repeatable).")
    var append: [String] = []

    @Option(help: "Guest memory, as QEMU's -m takes it.")
    var memory = "256M"

    @Option(help: "Guest vCPUs.")
    var cpus = 1

    @Option(help: "auto (KVM after a probe shows it works, else TCG), kvm or tcg.")
    var accel: AcceleratorProbe.Choice = .auto

    @Option(help: "How long a boot may take before QEMU is stopped: 60s, 500ms, 2m.")
    var timeout: DurationArgument = DurationArgument(argument: "60s")!

    func validate() throws {
        if noInitrd && initrd != nil { throw ValidationError("--no-initrd and --initrd cannot be used together") }
        if cpus < 1 || cpus > 64 { throw ValidationError("--cpus takes a number from 1 to 64") }
        if memory.isEmpty || !memory.first!.isNumber { throw ValidationError("--memory takes a size such as 256M or 1G") }
    }

    func bootOptions(command: [String] = [], icount: Bool = false) -> BootOptions {
        var options = BootOptions()
        options.kernel = kernel
        options.initrd = initrd
        options.noInitrd = noInitrd
        options.append = append.flatMap { $0.split(separator: " ").map(String.init) }
        options.memory = memory
        options.cpus = cpus
        options.accelerator = accel
        options.icount = icount
        options.command = command
        return options
    }
}

extension AcceleratorProbe.Choice: ExpressibleByArgument {}

/// `--recipe` and `--target`, for the commands that work per target.
struct RecipeTargets: ParsableArguments {
    @Option(help: "A recipe name from recipes/ or a path to a YAML recipe.")
    var recipe: String

    @Option(help: "x86_64, s390x or all.")
    var target: TargetSelection = .all

    /// The recipe, loaded and checked, and the targets selected in it.
    func load(_ factory: Factory) throws -> (Recipe, [Target]) {
        let loaded = try factory.recipes.load(recipe)
        return (loaded, try target.resolve(in: loaded))
    }
}

struct GlobalOptions: ParsableArguments {
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

    var console: Console {
        Console(verbosity: quiet ? .quiet : verbose ? .verbose : .normal)
    }

    func makeFactory(console: Console) throws -> Factory {
        let workspace = Workspace(library: try Library.locate(), cacheDirectory: cacheDir, outputDirectory: outputDir, sourceDirs: sourceDirs, offline: offline)
        return Factory(workspace: workspace, console: console)
    }

    /// Runs a command's work with signal handling and uniform error reporting.
    /// `body` returns what to print on success; a thrown `VMFactoryError` is printed as text or JSON.
    func run(_ body: @escaping @Sendable (Factory) async throws -> Output) async throws {
        let console = self.console
        let format = self.format
        do {
            let factory = try makeFactory(console: console)
            let output = try await Interrupts.cancellingOnSignals { try await body(factory) }
            console.endProgress()
            switch format {
            case .text: if !output.text.isEmpty { print(output.text) }
            case .json: print(output.json)
            }
            if let code = output.exitCode, code != 0 { throw ExitCode(code) }
            if output.failed { throw ExitCode(1) }
        } catch let error as VMFactoryError {
            console.endProgress()
            report(error)
            throw ExitCode(error.code == .interrupted ? 130 : 1)
        }
    }

    func report(_ error: VMFactoryError) {
        switch format {
        case .text:
            FileHandle.standardError.write(Data(("error: " + error.description + "\n").utf8))
        case .json:
            let payload = ErrorPayload(error: .init(code: error.code.rawValue, message: error.message, hint: error.hint, details: error.details))
            print(JSON.encode(payload))
        }
    }
}

/// What a command prints: text for people, JSON for scripts, and whether it counts as failed.
struct Output: Sendable {
    var text: String
    var json: String
    var failed = false
    /// The process's exit status on success, when it is not 0 (`boot` passes the guest's on).
    var exitCode: Int32? = nil

    init<T: Encodable>(text: String, value: T, failed: Bool = false, exitCode: Int32? = nil) {
        self.text = text
        self.json = JSON.encode(value)
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

enum JSON {
    static func encode<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(value) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}
