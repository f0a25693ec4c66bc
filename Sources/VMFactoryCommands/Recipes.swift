import ArgumentParser
import VMFactoryBoot
import VMFactoryCore
import VMFactoryExec
import VMFactoryKernel

struct Recipes: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the recipes in recipes/ with a one-line description each.")

    @OptionGroup var global: GlobalOptions

    struct Entry: Encodable {
        var name: String
        var path: String
        var description: String?
        var error: String?
    }

    func run() async throws {
        try await global.run { factory in
            let entries = factory.recipes.list().map { item -> Entry in
                switch item.summary {
                case .success(let description): return Entry(name: item.name, path: item.path, description: description)
                case .failure(let error): return Entry(name: item.name, path: item.path, error: error.message)
                }
            }
            let width = entries.map(\.name.count).max() ?? 0
            let text = entries.map { entry in
                entry.name.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + (entry.description ?? "(invalid: \(entry.error ?? ""))")
            }.joined(separator: "\n")
            return Output(text: text, value: entries, failed: entries.contains { $0.error != nil })
        }
    }
}
