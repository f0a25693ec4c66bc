import Foundation
import Synchronization
import VMFactoryCore
import VMFactoryKernel

/// What `vmfactory boot` and `vmfactory bench` boot, and how.
public struct BootOptions: Sendable {
    /// A folder laid out as a build's output folder (a pulled kernel image) instead of the
    /// recipe's output folder.
    public var imagesDirectory: String?
    /// A kernel image instead of the recipe's built one.
    public var kernel: String?
    /// An initrd instead of the recipe's built one.
    public var initrd: String?
    /// Boot the kernel alone; it ends in the VFS panic (the kernel-only measurement).
    public var noInitrd = false
    /// The kernel command line to start from instead of the recipe's (a runtime's own line).
    public var cmdline: String?
    /// Words added to the kernel command line.
    public var append: [String] = []
    public var memory = "256M"
    public var cpus = 1
    public var accelerator: AcceleratorProbe.Choice = .auto
    public var icount = false
    /// The program and arguments the init runs, passed after `--` on the command line.
    public var command: [String] = []

    public init() {}
}

/// A machine ready to boot, with what it is expected to print when it is up.
public struct BootPlan: Sendable {
    public var machine: QEMUMachine
    public var marker: String
    public var notes: [String]
    public var kernelSHA256: SHA256Digest
    public var initrdSHA256: SHA256Digest?
}

/// How a boot ended, for the caller of `vmfactory boot`.
public struct BootOutcome: Sendable, Codable {
    public var run: BootRun
    public var accelerator: QEMUMachine.Accelerator
    /// The workload's exit code: from QEMU's status through isa-debug-exit, else from the
    /// init's exit line.
    public var guestExitCode: Int32?
    public var phases: BootPhases
    public var notes: [String]

    public static func guestExitCode(run: BootRun, machine: QEMUMachine) -> Int32? {
        if machine.target == .x86_64, machine.debugExit, let status = run.status, status > 0,
           let code = QEMUMachine.code(fromDebugExitStatus: status) {
            return code
        }
        return ConsoleMarkers.exitCode(in: run.lines)
    }
}

/// Plans and runs boots of a recipe's built kernel, for `vmfactory boot` and `bench`.
public struct Booter: Sendable {
    /// The workspace, runner and console the kernel pipeline uses.
    public var factory: Factory

    public init(_ factory: Factory) { self.factory = factory }

    public var workspace: Workspace { factory.workspace }
    public var runner: any ProcessRunner { factory.runner }
    public var console: Console { factory.console }

    /// Runs QEMU with the workspace's host environment.
    public var bootRunner: BootRunner { BootRunner(baseEnvironment: Command.baseEnvironment(from: workspace.hostEnvironment)) }

    public var acceleratorProbe: AcceleratorProbe {
        AcceleratorProbe(cacheDirectory: workspace.cacheDirectory, console: console, runner: runner, bootRunner: bootRunner)
    }

    /// The kernel command line: the recipe's, then `append`, then the command after `--`.
    public static func cmdline(base: String, append: [String], command: [String]) -> String {
        var words = base.split(separator: " ").map(String.init) + append
        if !command.isEmpty {
            // The kernel splits its command line at blanks but keeps double-quoted words whole.
            words += ["--"] + command.map { $0.contains(" ") || $0.isEmpty ? "\"\($0)\"" : $0 }
        }
        return words.joined(separator: " ")
    }

    /// The kernel and initrd to boot: the recipe's built ones from the output folder unless
    /// others are given.
    public func images(_ recipe: Recipe, target: Target, options: BootOptions) throws -> (kernel: String, initrd: String?, manifest: BuildManifest?) {
        let output = options.imagesDirectory ?? workspace.outputDirectory(recipe: recipe.name, target: target)
        let manifest = try? BuildManifest.load(output + "/" + BuildManifest.fileName)
        let imageName = target == .x86_64 ? "vmlinux" : "bzImage"
        let buildHint = "run `vmfactory build --recipe \(recipe.name) --target \(target)` first, or give --kernel"
        let cwd = workspace.currentDirectory
        let kernel = options.kernel.map { FileStore.absolute($0, relativeTo: cwd) } ?? output + "/" + imageName
        guard FileStore.isRegularFile(kernel) else {
            throw VMFactoryError(.notFound, "no kernel at \(FileStore.displayPath(kernel))", hint: options.kernel == nil ? buildHint : "check the --kernel path")
        }
        guard !options.noInitrd else { return (kernel, nil, manifest) }
        let initrd: String
        if let given = options.initrd {
            initrd = FileStore.absolute(given, relativeTo: cwd)
        } else if let name = manifest?.artifacts(of: .initrd).first(where: { $0.name.hasPrefix("initrd") })?.name {
            initrd = output + "/" + name
        } else {
            throw VMFactoryError(.notFound, "no initrd in \(FileStore.displayPath(output))", hint: "run `vmfactory build` (or `vmfactory initrd`) for \(recipe.name)/\(target), give --initrd, or boot the kernel alone with --no-initrd")
        }
        guard FileStore.isRegularFile(initrd) else {
            throw VMFactoryError(.notFound, "no initrd at \(FileStore.displayPath(initrd))", hint: "check the --initrd path")
        }
        return (kernel, initrd, manifest)
    }

    /// The machine that boots `target` of `recipe`, its command line, and KVM or TCG.
    public func plan(_ recipe: Recipe, target: Target, options: BootOptions) async throws -> BootPlan {
        let targetRecipe = try recipe.requireTarget(target)
        let (kernel, initrd, manifest) = try images(recipe, target: target, options: options)
        let base = options.cmdline ?? manifest?.kernel?.cmdline ?? targetRecipe.cmdline
        let cmdline = Self.cmdline(base: base, append: options.append, command: options.command)
        var machine = QEMUMachine(
            target: target, kernel: kernel, initrd: initrd, cmdline: cmdline, memory: options.memory, cpus: options.cpus,
            accelerator: .tcg, console: QEMUMachine.console(fromCmdline: cmdline, target: target), icount: options.icount
        )
        let marker = options.noInitrd ? ConsoleMarkers.vfsPanic : ConsoleMarkers.ready
        var notes: [String] = []
        if options.icount {
            // Instruction counting is a TCG feature.
            if options.accelerator == .kvm { throw VMFactoryError(.invalidArgument, "--icount needs TCG", hint: "drop --accel kvm") }
            notes.append("TCG with -icount shift=0,sleep=off: the guest's clock counts instructions, so its times are deterministic")
        } else {
            let (accelerator, note) = try await acceleratorProbe.resolve(options.accelerator, machine: machine, marker: marker)
            machine.accelerator = accelerator
            if let note { notes.append(note) }
        }
        let kernelSHA256 = try await SHA256Digest.ofFile(at: kernel)
        let initrdSHA256: SHA256Digest? = if let initrd { try await SHA256Digest.ofFile(at: initrd) } else { nil }
        return BootPlan(machine: machine, marker: marker, notes: notes, kernelSHA256: kernelSHA256, initrdSHA256: initrdSHA256)
    }

    /// Boots once, handing each console line to `onLine` as it arrives.
    public func boot(_ plan: BootPlan, timeout: Duration, onLine: (@Sendable (ConsoleLine) -> Void)? = nil) async throws -> BootOutcome {
        // Some hosts' KVM runs a guest that never gets anywhere, silently: say so while waiting.
        let heard = Atomic<Bool>(false)
        let silence = plan.machine.accelerator == .kvm ? Task { [console] in
            try await Task.sleep(for: QEMUMessages.kvmSilence)
            if !heard.load(ordering: .relaxed) { console.warning(QEMUMessages.kvmSilenceNote) }
        } : nil
        defer { silence?.cancel() }
        let run = try await bootRunner.run(plan.machine.command, timeout: timeout, onLine: { line in
            heard.store(true, ordering: .relaxed)
            onLine?(line)
        })
        let phases = BootPhases(lines: run.lines, markerText: plan.marker, exit: run.ending == .exited ? run.seconds : nil)
        if run.ending == .timedOut {
            throw VMFactoryError(
                .bootTimedOut, "the guest did not finish within \(Elapsed.format(timeout))\(phases.marker == nil ? " and never printed '\(plan.marker)'" : ""); QEMU was stopped",
                hint: "the last console lines are above; raise --timeout, or drop `quiet` with --append to see more",
                details: ["command: \(plan.machine.command)", "last console lines:"] + run.lines.suffix(20).map { "| " + $0.text }
            )
        }
        if run.signal != nil || (run.status ?? 0) != 0 && phases.marker == nil {
            let status = run.signal.map { "signal \($0)" } ?? "status \(run.status ?? -1)"
            let said = run.stderr.split(separator: "\n").suffix(20).map { "| " + $0 }
            let console = run.lines.isEmpty ? [] : ["last console lines:"] + run.lines.suffix(20).map { "| " + $0.text }
            throw VMFactoryError(
                .bootFailed, "QEMU ended with \(status) before the guest was up",
                details: ["command: \(plan.machine.command)", "QEMU said:"] + said + console
            )
        }
        let exitCode = BootOutcome.guestExitCode(run: run, machine: plan.machine)
        return BootOutcome(run: run, accelerator: plan.machine.accelerator, guestExitCode: exitCode, phases: phases, notes: plan.notes)
    }
}
