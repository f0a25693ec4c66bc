import ArgumentParser
import Foundation
import VMFactoryBoot
import VMFactoryCore
import VMFactoryKernel

struct Build: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Build each target's kernel from the recipe and publish the artifacts with a manifest.",
        discussion: """
            Fetches and prepares the pinned source, resolves and verifies the config, compiles out of tree, compiles \
            the static init and writes the initrd, then publishes outputs/<recipe>/<target>/: the kernel images, \
            config, System.map, init, initrd, logs and manifest.json. Parts whose artifacts already match every \
            input are verified by sha256 and kept.
            """
    )

    @OptionGroup var global: GlobalOptions

    @OptionGroup var selection: RecipeTargets

    @Option(name: [.long, .customShort("j", allowingJoined: true)], help: "Parallel make jobs, as make's -j (default: the number of cores).")
    var jobs: Int = ProcessInfo.processInfo.activeProcessorCount

    @Flag(help: "Do not compile through ccache even when it is installed.")
    var noCcache = false

    func validate() throws {
        if jobs < 1 || jobs > 1024 { throw ValidationError("--jobs takes a number from 1 to 1024") }
    }

    func run() async throws {
        let options = BuildOptions(jobs: jobs, useCcache: !noCcache)
        try await selection.run(global) { factory, recipe, targets in
            BuildReport.output(try await factory.build(recipe, targets: targets, options: options))
        }
    }
}

/// The text and JSON of `build` and `initrd`.
enum BuildReport {
    static func output(_ results: [BuildResult]) -> Output {
        var lines: [String] = []
        for result in results {
            let how = result.upToDate ? "up to date" : String(format: "built in %.1f s", result.seconds)
            let kernel = result.manifest.kernel.map { "kernel \($0.release)" } ?? "no kernel"
            lines.append("\(result.target): \(how), \(kernel) -> \(FileStore.displayPath(result.outputDirectory))")
            let width = result.manifest.artifacts.map(\.name.count).max() ?? 0
            for artifact in result.manifest.artifacts {
                let size = ByteCount.format(artifact.size)
                lines.append("  \(artifact.name.padding(toLength: width, withPad: " ", startingAt: 0))  \(size.padding(toLength: 10, withPad: " ", startingAt: 0))  sha256 \(artifact.sha256)")
            }
        }
        return Output(text: lines.joined(separator: "\n"), value: results)
    }
}
