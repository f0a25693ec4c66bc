import ArgumentParser
import Foundation
import VMFactoryBoot
import VMFactoryCore
import VMFactoryExec
import VMFactoryKernel

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
            return [try recipe.requireTarget(Target(rawValue: rawValue)!).target]
        }
    }
}

/// `--target x86_64|s390x` for the commands that boot one machine.
enum SingleTarget: String, ExpressibleByArgument, CaseIterable {
    case x86_64, s390x
    var target: Target { Target(rawValue: rawValue)! }
}

/// A duration written as `60s`, `500ms`, `2m` or a number of seconds.
struct DurationArgument: ExpressibleByArgument, CustomStringConvertible {
    var duration: Duration
    /// As it was written (`60s`), which is how help shows a default.
    var description: String

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
        description = argument
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

    @Option(help: "A kernel command line to boot with instead of the recipe's (every kernel compared gets it).")
    var cmdline: String?

    @Option(help: "Another runtime's usual kernel command line instead of the recipe's: firecracker, kata or qemu.")
    var cmdlinePreset: RuntimeCmdline?

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
        if cmdline != nil && cmdlinePreset != nil { throw ValidationError("--cmdline and --cmdline-preset cannot be used together") }
    }

    /// `--cmdline`, or the preset's line for `target`.
    func baseCmdline(for target: Target) throws -> String? {
        guard let preset = cmdlinePreset else { return cmdline }
        guard let line = preset.cmdline(for: target) else {
            throw VMFactoryError(.invalidArgument, "--cmdline-preset \(preset.rawValue): \(preset.runtimeName) runs no \(target) guests", hint: "choose another preset, or give the line with --cmdline")
        }
        return line
    }

    /// The domain's boot options from these flags.
    func bootOptions(target: Target, command: [String] = [], icount: Bool = false) throws -> BootOptions {
        var options = BootOptions()
        options.cmdline = try baseCmdline(for: target)
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
extension RuntimeCmdline: ExpressibleByArgument {}

/// `--recipe`: a recipe name from recipes/ or a path.
struct RecipeOption: ParsableArguments {
    @Option(help: "A recipe name from recipes/ or a path to a YAML recipe.")
    var recipe: String

    /// Runs `body` on the recipe, loaded and checked (see `GlobalOptions.run`).
    func run(_ global: GlobalOptions, _ body: @escaping @Sendable (Factory, Recipe) async throws -> Output) async throws {
        let recipe = self.recipe
        try await global.run { factory in try await body(factory, try factory.recipes.load(recipe)) }
    }
}

/// `--recipe` and `--target`, for the commands that work per target.
struct RecipeTargets: ParsableArguments {
    @OptionGroup var recipe: RecipeOption

    @Option(help: "x86_64, s390x or all.")
    var target: TargetSelection = .all

    /// Runs `body` on the recipe and the targets selected in it.
    func run(_ global: GlobalOptions, _ body: @escaping @Sendable (Factory, Recipe, [Target]) async throws -> Output) async throws {
        let target = self.target
        try await recipe.run(global) { factory, recipe in try await body(factory, recipe, try target.resolve(in: recipe)) }
    }
}
