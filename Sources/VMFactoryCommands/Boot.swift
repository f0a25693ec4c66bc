import ArgumentParser
import Foundation
import VMFactoryBoot
import VMFactoryCore
import VMFactoryExec
import VMFactoryImage
import VMFactoryKernel
import VMFactoryPublish

struct Boot: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot the recipe's kernel and initrd in QEMU, stream the console, and exit with the guest's exit code.",
        discussion: """
            Words after -- become the init's entrypoint and arguments. x86_64 boots QEMU microvm, s390x \
            s390-ccw-virtio. With --accel auto, KVM is used only after a short probe boot showed that it works on \
            this host; otherwise TCG, saying why.
            """
    )

    @OptionGroup var global: GlobalOptions

    @OptionGroup var recipe: RecipeOption

    @Option(help: "x86_64 or s390x.")
    var target: SingleTarget

    @OptionGroup var machine: MachineOptions

    @Flag(help: "Print the QEMU command instead of running it.")
    var printQemu = false

    @Option(help: "Boot a published kernel and initrd (oci:DIR[:TAG], oci-archive:FILE[:TAG], docker://HOST/REPO:TAG), pulled and verified once, instead of the recipe's build.")
    var kernelImage: String?

    @OptionGroup var registry: RegistryArguments

    func validate() throws {
        if kernelImage != nil, machine.kernel != nil || machine.initrd != nil {
            throw ValidationError("--kernel-image brings its own kernel and initrd; drop --kernel and --initrd")
        }
    }

    @Argument(parsing: .postTerminator, help: "The program and arguments for the init to run.")
    var command: [String] = []

    func run() async throws {
        let target = self.target.target
        let machine = self.machine, command = self.command
        let timeout = machine.timeout.duration
        let printOnly = printQemu
        let streaming = global.format == .text
        let stdout = CommandContext.current.stdout
        let kernelImage = self.kernelImage, registry = self.registry
        try await recipe.run(global) { factory, loaded in
            let booter = Booter(factory)
            var options = try machine.bootOptions(target: target, command: command)
            if let kernelImage {
                options.imagesDirectory = try await PulledKernels.directory(kernelImage, target: target, factory: factory, skopeo: registry.skopeo(.current))
            }
            if printOnly, options.accelerator == .auto {
                // Printing runs nothing, not even the probe: the remembered answer, else TCG.
                options.accelerator = booter.acceleratorProbe.remembered(for: target) == true ? .kvm : .tcg
            }
            let plan = try await booter.plan(loaded, target: target, options: options)
            if printOnly {
                return Output(text: plan.machine.command.description, value: plan.machine.command.argv)
            }
            for note in plan.notes { factory.console.note(note) }
            factory.console.info("booting \(loaded.name)/\(target) under \(plan.machine.accelerator.rawValue.uppercased())")
            // Each console line is written as it arrives, also into a pipe or a file.
            let outcome = try await booter.boot(plan, timeout: timeout) { line in
                if streaming { stdout.writeLine(line.text) }
            }
            var summary = String(format: "guest up after %.3f s", outcome.phases.marker ?? .nan)
            if let exit = outcome.phases.exit { summary += String(format: ", QEMU exited after %.3f s", exit) }
            if let code = outcome.guestExitCode { summary += ", exit code \(code)" }
            factory.console.info(summary)
            return Output(text: "", value: outcome, exitCode: outcome.guestExitCode ?? (outcome.phases.marker == nil ? 1 : 0))
        }
    }
}
