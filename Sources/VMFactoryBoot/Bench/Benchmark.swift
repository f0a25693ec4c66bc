import Foundation
import VMFactoryCore
import VMFactoryKernel

/// How `vmfactory bench` measures.
public struct BenchOptions: Sendable {
    /// Measured boots per kernel.
    public var runs = 10
    /// Boots per kernel run first and discarded.
    public var warmup = 1
    /// Other kernels booted the same way: image files, or recipes whose kernel is built.
    public var compare: [String] = []
    public var timeout: Duration = .seconds(60)

    public init() {}
}

/// A benchmark from start to report: the candidates booted the same way, interleaved, and
/// the environment they ran in.
public struct Benchmark: Sendable {
    public var booter: Booter

    public init(_ booter: Booter) { self.booter = booter }

    var console: Console { booter.console }
    var recipes: RecipeLoader { booter.factory.recipes }

    /// Boots `recipe`'s kernel and each `--compare` kernel `options.runs` times and writes the
    /// reports into the recipe's output folder.
    public func run(_ recipe: Recipe, target: Target, boot: BootOptions, options: BenchOptions) async throws -> BenchReport {
        let plan = try await booter.plan(recipe, target: target, options: boot)
        for note in plan.notes { console.note(note) }
        let machines = try await candidates(recipe, plan: plan, target: target, boot: boot, compare: options.compare)
        console.info("bench \(recipe.name)/\(target): \(options.runs) runs after \(options.warmup) warm-up per kernel, \(machines.count) kernel\(machines.count == 1 ? "" : "s"), \(plan.machine.accelerator.rawValue.uppercased())\(boot.icount ? " with icount" : "")")
        let runner = BenchRunner(timeout: options.timeout, console: console, bootRunner: booter.bootRunner)
        let samples = try await runner.run(machines, marker: plan.marker, runs: options.runs, warmup: options.warmup)
        let (summaries, comparisons) = BenchReport.summarize(samples, candidates: machines.map(\.0))
        let report = BenchReport(
            recipe: recipe.name, target: target, marker: plan.marker, runs: options.runs, warmup: options.warmup,
            environment: try await environment(plan), candidates: machines.map(\.0), samples: samples,
            summaries: summaries, comparisons: comparisons
        )
        let directory = booter.workspace.outputDirectory(recipe: recipe.name, target: target) + "/bench"
        try report.write(to: directory)
        console.info("reports: \(FileStore.displayPath(directory))/report.{json,md,svg}")
        return report
    }

    /// This recipe's kernel, then each `compare` entry, booted with the same initrd, command
    /// line, QEMU flags and accelerator.
    func candidates(_ recipe: Recipe, plan: BootPlan, target: Target, boot: BootOptions, compare: [String]) async throws -> [(BenchCandidate, QEMUMachine)] {
        var machines = [(BenchCandidate(
            label: recipe.name, kernel: plan.machine.kernel, kernelSHA256: plan.kernelSHA256,
            initrd: plan.machine.initrd, initrdSHA256: plan.initrdSHA256, cmdline: plan.machine.cmdline
        ), plan.machine)]
        for other in compare {
            let kernel: String
            let label: String
            if FileStore.isRegularFile(other) {
                kernel = FileStore.absolute(other, relativeTo: booter.workspace.currentDirectory)
                label = URL(fileURLWithPath: other).lastPathComponent
            } else {
                let otherRecipe = try recipes.load(other)
                // The same accelerator as the first kernel's, without probing again.
                var pinned = boot
                pinned.accelerator = plan.machine.accelerator == .kvm ? .kvm : .tcg
                kernel = try await booter.plan(otherRecipe, target: target, options: pinned).machine.kernel
                label = otherRecipe.name
            }
            guard !machines.contains(where: { $0.0.label == label }) else {
                throw VMFactoryError(.invalidArgument, "--compare \(other) is named like another kernel of this benchmark (\(label))", hint: "copy it under another file name")
            }
            var machine = plan.machine
            machine.kernel = kernel
            machines.append((BenchCandidate(
                label: label, kernel: kernel, kernelSHA256: try await SHA256Digest.ofFile(at: kernel),
                initrd: machine.initrd, initrdSHA256: plan.initrdSHA256, cmdline: machine.cmdline
            ), machine))
        }
        return machines
    }

    func environment(_ plan: BootPlan) async throws -> BenchReport.Environment {
        let qemu = try await Toolchain.firstLine(of: plan.machine.target.qemuSystem, runner: booter.runner)
        return BenchReport.Environment(
            hostCPU: HostInfo.cpuModel, hostCores: HostInfo.cores, qemu: qemu, accelerator: plan.machine.accelerator,
            icount: plan.machine.icount, vcpus: plan.machine.cpus, memory: plan.machine.memory,
            console: plan.machine.console.device, machine: plan.machine.command.argv, notes: plan.notes
        )
    }

    /// One boot with `initcall_debug`: the slowest initcalls and the largest gaps, as text.
    public func explain(_ recipe: Recipe, target: Target, boot: BootOptions, timeout: Duration) async throws -> (text: String, explanation: BootExplanation) {
        let plan = try await booter.plan(recipe, target: target, options: boot)
        for note in plan.notes { console.note(note) }
        var machine = plan.machine
        machine.cmdline = BootExplainer.cmdline(from: machine.cmdline)
        console.info("booting once with initcall_debug: \(machine.cmdline)")
        let run = try await booter.bootRunner.run(machine.command, timeout: timeout)
        if run.ending == .timedOut {
            console.warning("the explaining boot timed out; what it printed is still analysed")
        }
        // A kernel without kallsyms names its initcalls by address; System.map beside it names them.
        let systemMap = URL(fileURLWithPath: machine.kernel).deletingLastPathComponent().path + "/System.map"
        let explanation = BootExplainer.explain(lines: run.lines, cmdline: machine.cmdline, symbols: BootExplainer.symbols(systemMap: systemMap))
        var lines = explanation.textLines
        if let ready = run.firstLine(containing: plan.marker) {
            lines.append(String(format: "'%@' after %.3f s (host clock, with the extra console output of this boot)", plan.marker, ready.time))
        }
        return (lines.joined(separator: "\n"), explanation)
    }
}

extension BootExplanation {
    /// The slowest initcalls and the largest gaps, with their hints, for people.
    var textLines: [String] {
        var lines = ["Slowest initcalls (\(initcallMicroseconds / 1000) ms in all initcalls):"]
        for call in slowest {
            lines.append(String(format: "  %8.1f ms  %@", Double(call.microseconds) / 1000, call.name) + (call.hint.map { "\n               hint: " + $0 } ?? ""))
        }
        lines.append("Largest gaps between console lines:")
        for gap in gaps {
            lines.append(String(format: "  %8.1f ms  (%@ clock) before: %@", gap.seconds * 1000, gap.guestClock ? "guest" : "host", gap.after))
            if let hint = gap.hint { lines.append("               hint: " + hint) }
        }
        return lines
    }
}
