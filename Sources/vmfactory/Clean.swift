import ArgumentParser
import VMFactory

struct Clean: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove build directories, or with --all everything in the cache.",
        discussion: "Outputs are never touched. Directories that a running build holds are left alone with a warning."
    )

    @OptionGroup var global: GlobalOptions

    @Option(help: "Remove only this recipe's build directories.")
    var recipe: String?

    @Flag(help: "Remove the whole cache: build directories, source trees, filed configs, ccache and downloaded sources.")
    var all = false

    func validate() throws {
        if all && recipe != nil { throw ValidationError("--all already removes every recipe's builds; give --recipe or --all, not both") }
    }

    func run() async throws {
        let recipe = self.recipe
        let all = self.all
        try await global.run { factory in
            // A recipe given by path is known by its file name, like its build directories.
            let name = recipe.map { $0.contains("/") || $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") ? (try? factory.recipes.load($0).name) ?? $0 : $0 }
            let report = try await factory.clean(recipe: name, all: all)
            let text = report.removed.isEmpty
                ? "nothing to remove in \(factory.workspace.cacheDirectory)"
                : report.removed.map { "removed \($0)" }.joined(separator: "\n") + "\nfreed \(ByteCount.format(report.bytes))"
            return Output(text: text, value: report)
        }
    }
}
