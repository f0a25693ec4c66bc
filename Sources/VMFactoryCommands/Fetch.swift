import ArgumentParser
import VMFactoryBoot
import VMFactoryCore
import VMFactoryKernel

struct Fetch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Put the recipe's pinned kernel source into the cache, verified by sha256.")

    @OptionGroup var global: GlobalOptions

    @Option(help: "A recipe name from recipes/ or a path to a YAML recipe.")
    var recipe: String

    struct Result: Encodable {
        var path: String
        var sha256: String
        var origin: SourceOrigin?
        var cached: Bool
    }

    func run() async throws {
        let recipe = self.recipe
        try await global.run { factory in
            let loaded = try factory.recipes.load(recipe)
            let source = try await factory.fetch(loaded)
            let result = Result(path: source.path, sha256: source.sha256.hex, origin: source.origin, cached: source.wasCached)
            let from = source.origin.map { " (from \($0))" } ?? ""
            return Output(text: "\(source.path)\n  sha256 \(source.sha256)\(source.wasCached ? ", already cached" : "")\(from)", value: result)
        }
    }
}
