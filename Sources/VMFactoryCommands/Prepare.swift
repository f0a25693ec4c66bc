import ArgumentParser
import VMFactoryBoot
import VMFactoryCore
import VMFactoryKernel

struct Prepare: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Fetch, verify, extract and patch the recipe's kernel source; print the tree's path.")

    @OptionGroup var global: GlobalOptions

    @Option(help: "A recipe name from recipes/ or a path to a YAML recipe.")
    var recipe: String

    struct Result: Encodable {
        var tree: String
        var key: String
        var source: String
        var patches: [String]
    }

    func run() async throws {
        let recipe = self.recipe
        try await global.run { factory in
            let loaded = try factory.recipes.load(recipe)
            let (source, tree) = try await factory.prepare(loaded)
            let result = Result(tree: tree.path, key: tree.key.hex, source: source.sha256.hex, patches: tree.patches.map(\.name))
            return Output(text: tree.path, value: result)
        }
    }
}
