import ArgumentParser
import Foundation
import VMFactoryBoot
import VMFactoryCore
import VMFactoryExec
import VMFactoryKernel

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

    @OptionGroup var recipe: RecipeOption

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
        let target = self.target.target
        let machine = self.machine, icount = self.icount
        var options = BenchOptions()
        options.runs = runs
        options.warmup = warmup
        options.compare = compare
        options.timeout = machine.timeout.duration
        let benchOptions = options
        let explain = self.explain
        try await recipe.run(global) { factory, loaded in
            let boot = try machine.bootOptions(target: target, icount: icount)
            let benchmark = Benchmark(Booter(factory))
            if explain {
                let (text, explanation) = try await benchmark.explain(loaded, target: target, boot: boot, timeout: benchOptions.timeout)
                return Output(text: text, value: explanation)
            }
            let report = try await benchmark.run(loaded, target: target, boot: boot, options: benchOptions)
            let failed = report.samples.filter { !$0.ok && !$0.warmup }
            if !failed.isEmpty {
                factory.console.warning("\(failed.count) of \(report.samples.filter { !$0.warmup }.count) measured boots failed; they are in the report as failed: " + (failed.first?.failure ?? ""))
            }
            return Output(text: report.markdown, value: report, failed: !failed.isEmpty)
        }
    }
}
