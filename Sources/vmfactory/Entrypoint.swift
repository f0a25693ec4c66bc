import ArgumentParser

@main
struct VMFactoryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmfactory",
        abstract: "Builds pinned, verified, reproducible guest kernels and initrds for microVMs.",
        subcommands: [Recipes.self, Fetch.self, Prepare.self, Config.self, Build.self, Initrd.self, Boot.self, Bench.self, Clean.self, Doctor.self]
    )
}
