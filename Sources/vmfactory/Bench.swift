import ArgumentParser
import Foundation
import VMFactory

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot the recipe's kernel N times and report boot latency per phase, compared with other kernels.",
        discussion: """
            Every console line is stamped on the host's monotonic clock from QEMU's spawn. Phases: first console \
            output, the kernel running /init (when the console shows it), the init's ready line (or the VFS panic with \
            --no-initrd), QEMU's exit; the guest's own printk and CLOCK_BOOTTIME times beside them. --compare boots \
            other kernels (a file, or a recipe's built kernel) with the same initrd and QEMU flags, interleaved, and \
            reports the ratio of medians with a permutation test. Reports go to outputs/<recipe>/<target>/bench/.
            """
    )

    @OptionGroup var global: GlobalOptions

    @Option(help: "A recipe name from recipes/ or a path to a YAML recipe.")
    var recipe: String

    @Option(help: "x86_64 or s390x.")
    var target: SingleTarget

    @Option(help: "Measured boots per kernel.")
    var runs = 10

    @Option(help: "Boots per kernel run first and discarded.")
    var warmup = 1

    @Option(help: "Another kernel to boot the same way: a kernel image, or a recipe whose kernel is built (repeatable).")
    var compare: [String] = []

    @Flag(help: "Run TCG with -icount shift=0,sleep=off: the guest's virtual time to the ready line is deterministic.")
    var icount = false

    @Flag(help: "Boot once with initcall_debug and list the slowest initcalls and the largest gaps, with hints.")
    var explain = false

    @OptionGroup var machine: MachineOptions

    func validate() throws {
        if runs < 1 || runs > 10_000 { throw ValidationError("--runs takes a number from 1 to 10000") }
        if warmup < 0 || warmup > 1000 { throw ValidationError("--warmup takes a number from 0 to 1000") }
        if icount && machine.accel == .kvm { throw ValidationError("--icount needs TCG; drop --accel kvm") }
        if explain && !compare.isEmpty { throw ValidationError("--explain looks at one kernel; drop --compare") }
    }

    func run() async throws {
        let recipe = self.recipe, target = self.target.target
        let options = machine.bootOptions(icount: icount)
        let timeout = machine.timeout.duration
        let runs = self.runs, warmup = self.warmup, compare = self.compare, explain = self.explain
        try await global.run { factory in
            let loaded = try factory.recipes.load(recipe)
            let plan = try await factory.bootPlan(loaded, target: target, options: options)
            for note in plan.notes { factory.console.note(note) }
            if explain {
                return try await Self.explain(plan, factory: factory, timeout: timeout)
            }

            // The candidates: this recipe's kernel, then each --compare, booted the same way.
            var machines = [(BenchCandidate(
                label: loaded.name, kernel: plan.machine.kernel, kernelSHA256: plan.kernelSHA256,
                initrd: plan.machine.initrd, initrdSHA256: plan.initrdSHA256, cmdline: plan.machine.cmdline
            ), plan.machine)]
            for other in compare {
                let kernel: String
                let label: String
                if FileStore.isRegularFile(other) {
                    kernel = FileStore.absolute(other, relativeTo: FileManager.default.currentDirectoryPath)
                    label = URL(fileURLWithPath: other).lastPathComponent
                } else {
                    let otherRecipe = try factory.recipes.load(other)
                    var otherOptions = options
                    otherOptions.accelerator = plan.machine.accelerator == .kvm ? .kvm : .tcg
                    kernel = try await factory.bootPlan(otherRecipe, target: target, options: otherOptions).machine.kernel
                    label = otherRecipe.name
                }
                guard !machines.contains(where: { $0.0.label == label }) else {
                    throw VMFactoryError(.invalidArgument, "--compare \(other) is named like another kernel of this benchmark (\(label))", hint: "copy it under another file name")
                }
                var machine = plan.machine
                machine.kernel = kernel
                machines.append((BenchCandidate(
                    label: label, kernel: kernel, kernelSHA256: try? SHA256Digest.ofFile(at: kernel),
                    initrd: machine.initrd, initrdSHA256: plan.initrdSHA256, cmdline: machine.cmdline
                ), machine))
            }

            factory.console.info("bench \(loaded.name)/\(target): \(runs) runs after \(warmup) warm-up per kernel, \(machines.count) kernel\(machines.count == 1 ? "" : "s"), \(plan.machine.accelerator.rawValue.uppercased())\(options.icount ? " with icount" : "")")
            let samples = try await BenchRunner(timeout: timeout, console: factory.console).run(machines, marker: plan.marker, runs: runs, warmup: warmup)
            let (summaries, comparisons) = BenchReport.summarize(samples, candidates: machines.map(\.0))
            let qemu = (try? await Toolchain.firstLine(of: target.qemuSystem, runner: factory.runner)) ?? target.qemuSystem
            let report = BenchReport(
                recipe: loaded.name, target: target, marker: plan.marker, runs: runs, warmup: warmup,
                environment: .init(
                    hostCPU: HostInfo.cpuModel, hostCores: HostInfo.cores, qemu: qemu, accelerator: plan.machine.accelerator,
                    icount: options.icount, vcpus: plan.machine.cpus, memory: plan.machine.memory, console: plan.machine.console.device,
                    machine: plan.machine.command.argv, notes: plan.notes
                ),
                candidates: machines.map(\.0), samples: samples, summaries: summaries, comparisons: comparisons
            )
            let directory = factory.workspace.outputDirectory(recipe: loaded.name, target: target) + "/bench"
            try report.write(to: directory)
            factory.console.info("reports: \(FileStore.displayPath(directory))/report.{json,md,svg}")
            let failed = samples.filter { !$0.ok && !$0.warmup }
            if !failed.isEmpty {
                factory.console.warning("\(failed.count) of \(samples.filter { !$0.warmup }.count) measured boots failed; they are in the report as failed: " + (failed.first?.failure ?? ""))
            }
            return Output(text: report.markdown, value: report, failed: !failed.isEmpty)
        }
    }

    static func explain(_ plan: BootPlan, factory: Factory, timeout: Duration) async throws -> Output {
        var machine = plan.machine
        machine.cmdline = BootExplainer.cmdline(from: machine.cmdline)
        factory.console.info("booting once with initcall_debug: \(machine.cmdline)")
        let run = try await BootRunner().run(machine.command, timeout: timeout)
        if run.ending == .timedOut {
            factory.console.warning("the explaining boot timed out; what it printed is still analysed")
        }
        // A kernel without kallsyms names its initcalls by address; System.map beside it names them.
        let systemMap = URL(fileURLWithPath: machine.kernel).deletingLastPathComponent().path + "/System.map"
        let explanation = BootExplainer.explain(lines: run.lines, cmdline: machine.cmdline, symbols: BootExplainer.symbols(systemMap: systemMap))
        var lines = ["Slowest initcalls (\(explanation.initcallMicroseconds / 1000) ms in all initcalls):"]
        for call in explanation.slowest {
            lines.append(String(format: "  %8.1f ms  %@", Double(call.microseconds) / 1000, call.name) + (call.hint.map { "\n               hint: " + $0 } ?? ""))
        }
        lines.append("Largest gaps between console lines:")
        for gap in explanation.gaps {
            lines.append(String(format: "  %8.1f ms  (%@ clock) before: %@", gap.seconds * 1000, gap.guestClock ? "guest" : "host", gap.after))
            if let hint = gap.hint { lines.append("               hint: " + hint) }
        }
        if let ready = run.firstLine(containing: plan.marker) {
            lines.append(String(format: "'%@' after %.3f s (host clock, with the extra console output of this boot)", plan.marker, ready.time))
        }
        return Output(text: lines.joined(separator: "\n"), value: explanation)
    }
}
