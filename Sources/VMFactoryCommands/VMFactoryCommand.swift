import ArgumentParser
import VMFactoryExec

/// The root command. The executable only calls `main()`; tests parse and run it in-process.
public struct VMFactoryCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "vmfactory",
        abstract: "Builds pinned, verified, reproducible guest kernels and initrds for microVMs.",
        subcommands: [Recipes.self, Fetch.self, Prepare.self, Config.self, Build.self, Initrd.self, Boot.self, Bench.self, Rootfs.self, Images.self, Templates.self, Run.self, Exec.self, Ps.self, Logs.self, Stop.self, Kill.self, Rm.self, Wait.self, Inspect.self, Cp.self, Publish.self, Pull.self, Clean.self, Doctor.self]
    )

    public init() {}
}
