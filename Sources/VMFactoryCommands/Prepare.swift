import ArgumentParser
import VMFactoryBoot
import VMFactoryCore
import VMFactoryExec
import VMFactoryKernel

struct Prepare: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Fetch, verify, extract and patch the recipe's kernel source; print the tree's path.")

    @OptionGroup var global: GlobalOptions

    @OptionGroup var recipe: RecipeOption

    struct Result: Encodable {
        var tree: String
        var key: String
        var source: String
        var patches: [String]
    }

    func run() async throws {
        try await recipe.run(global) { factory, recipe in
            let (source, tree) = try await factory.prepare(recipe)
            let result = Result(tree: tree.path, key: tree.key.hex, source: source.sha256.hex, patches: tree.patches.map(\.name))
            return Output(text: tree.path, value: result)
        }
    }
}
