import ArgumentParser
import VMFactoryBoot
import VMFactoryCore
import VMFactoryExec
import VMFactoryKernel

struct Config: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Resolve each target's kernel config from the base and the fragments, and verify every requested symbol.",
        discussion: "Writes outputs/<recipe>/<target>/config. Fails, naming the symbol, the fragment line and the unmet dependencies, when a requested value did not land."
    )

    @OptionGroup var global: GlobalOptions

    @OptionGroup var selection: RecipeTargets

    func run() async throws {
        try await selection.run(global) { factory, recipe, targets in
            let results = try await factory.configure(recipe, targets: targets)
            var lines: [String] = []
            for result in results {
                if result.passed {
                    lines.append("\(result.target): \(result.checked) requested settings verified; config: \(FileStore.displayPath(result.config))")
                } else {
                    lines.append("\(result.target): \(result.misses.count) of \(result.checked) requested settings did not land (config: \(FileStore.displayPath(result.config))):")
                    lines += result.missLines.map { "  " + $0 }
                }
            }
            let failed = results.contains { !$0.passed }
            if failed {
                factory.console.warning("the resolved config does not match the fragments; fix the fragments or the dependencies named above")
            }
            return Output(text: lines.joined(separator: "\n"), value: results, failed: failed)
        }
    }
}
