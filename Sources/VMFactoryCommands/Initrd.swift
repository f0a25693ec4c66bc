import ArgumentParser
import VMFactoryBoot
import VMFactoryCore
import VMFactoryExec
import VMFactoryKernel

struct Initrd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compile the static init and write the initrd of each target, without building the kernel.",
        discussion: "Publishes init and initrd.cpio[.gz|.zst|.lz4] into outputs/<recipe>/<target>/, keeping the kernel artifacts of an earlier build there."
    )

    @OptionGroup var global: GlobalOptions

    @OptionGroup var selection: RecipeTargets

    func run() async throws {
        try await selection.run(global) { factory, recipe, targets in
            BuildReport.output(try await factory.buildInitrd(recipe, targets: targets))
        }
    }
}
