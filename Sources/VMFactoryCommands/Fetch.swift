import ArgumentParser
import VMFactoryBoot
import VMFactoryCore
import VMFactoryExec
import VMFactoryKernel

struct Fetch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Put the recipe's pinned kernel source into the cache, verified by sha256.")

    @OptionGroup var global: GlobalOptions

    @OptionGroup var recipe: RecipeOption

    func run() async throws {
        try await recipe.run(global) { factory, recipe in
            let source = try await factory.fetch(recipe)
            let from = source.origin.map { " (from \($0))" } ?? ""
            return Output(text: "\(source.path)\n  sha256 \(source.sha256)\(source.wasCached ? ", already cached" : "")\(from)", value: source)
        }
    }
}
