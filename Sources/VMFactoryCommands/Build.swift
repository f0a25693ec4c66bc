import ArgumentParser
import Foundation
import VMFactoryBoot
import VMFactoryCore
import VMFactoryExec
import VMFactoryKernel
import VMFactoryPublish

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

    @Option(name: [.long, .customShort("j", allowingJoined: true)], help: "Parallel make jobs, as make's -j (default: the number of cores; with distcc, the helpers' slots; with icecream, \(IceccPlanner.jobsPerCore) per core).")
    var jobs: Int?

    @Flag(help: "Do not compile through ccache even when it is installed.")
    var noCcache = false

    @Option(help: "Compile on these distcc helpers, as distcc lists them: 'HOST[:PORT][/LIMIT] …' (else $DISTCC_HOSTS, else build.distcc of the user config).")
    var distcc: String?

    @Flag(help: "Compile here even when $DISTCC_HOSTS or the user config name helpers.")
    var noDistcc = false

    @Flag(help: "Compile through icecream: this machine's iceccd and its scheduler pick the helpers (else build.icecc of the user config).")
    var icecc = false

    @Flag(help: "Do not compile through icecream even when the user config says so.")
    var noIcecc = false

    @Option(help: "Take the artifacts from this build cache when it has the inputs' entry: oci:DIR or docker://HOST/REPO.")
    var cacheFrom: String?

    @Option(help: "Put the artifacts into this build cache after the build: oci:DIR or docker://HOST/REPO.")
    var cacheTo: String?

    @OptionGroup var registry: RegistryArguments

    func validate() throws {
        if let jobs, jobs < 1 || jobs > 1024 { throw ValidationError("--jobs takes a number from 1 to 1024") }
        if distcc != nil && noDistcc { throw ValidationError("--distcc and --no-distcc cannot be used together") }
        if icecc && noIcecc { throw ValidationError("--icecc and --no-icecc cannot be used together") }
        if icecc && distcc != nil { throw ValidationError("--icecc and --distcc cannot be used together: a build compiles through one engine") }
    }

    func run() async throws {
        let jobs = self.jobs, noCcache = self.noCcache, distcc = self.distcc, noDistcc = self.noDistcc, icecc = self.icecc, noIcecc = self.noIcecc
        let cacheFrom = self.cacheFrom, cacheTo = self.cacheTo, registry = self.registry
        try await selection.run(global) { factory, recipe, targets in
            let context = CommandContext.current
            var options = BuildOptions(jobs: jobs, useCcache: !noCcache)
            options.helpers = try UserConfig.helpers(distcc: distcc, icecc: icecc, noDistcc: noDistcc, noIcecc: noIcecc, environment: context.environment)
            func cache(_ text: String) throws -> RegistryBuildCache {
                try RegistryBuildCache(
                    parsing: text, currentDirectory: context.currentDirectory, skopeo: registry.skopeo(context), console: factory.console,
                    temporaryDirectory: factory.workspace.cacheDirectory + "/tmp"
                )
            }
            options.cacheFrom = try cacheFrom.map(cache)
            options.cacheTo = try cacheTo.map(cache)
            return BuildReport.output(try await factory.build(recipe, targets: targets, options: options))
        }
    }
}

/// The text and JSON of `build` and `initrd`.
enum BuildReport {
    static func output(_ results: [BuildResult]) -> Output {
        var lines: [String] = []
        for result in results {
            var how = result.upToDate ? "up to date" : String(format: "built in %.1f s", result.seconds)
            if let origin = result.cachedFrom { how += ", kernel from \(origin)" }
            let kernel = result.manifest.kernel.map { "kernel \($0.release)" } ?? "no kernel"
            lines.append("\(result.target): \(how), \(kernel) -> \(FileStore.displayPath(result.outputDirectory))")
            if let cached = result.cachedTo { lines.append("  cached as \(cached)") }
            let width = result.manifest.artifacts.map(\.name.count).max() ?? 0
            for artifact in result.manifest.artifacts {
                let size = ByteCount.format(artifact.size)
                lines.append("  \(artifact.name.padding(toLength: width, withPad: " ", startingAt: 0))  \(size.padding(toLength: 10, withPad: " ", startingAt: 0))  sha256 \(artifact.sha256)")
            }
        }
        return Output(text: lines.joined(separator: "\n"), value: results)
    }
}
