import Foundation
import VMFactoryArchive
import VMFactoryCore
import Yams

/// Finds recipes by name or path, decodes them, and checks every value, reporting each
/// problem at the file:line:column where it stands.
public struct RecipeLoader: Sendable {
    /// Folders searched for fragments and patch series after a recipe's own.
    public var library: Library
    /// Recipe paths on the command line are relative to this folder.
    public var currentDirectory: String

    /// Whether `--recipe` names a file rather than a recipe of the library.
    public static func isPath(_ nameOrPath: String) -> Bool {
        nameOrPath.contains("/") || nameOrPath.hasSuffix(".yaml") || nameOrPath.hasSuffix(".yml")
    }

    /// The name a recipe is known by (its build directories, its outputs): the file's name
    /// without `.yaml`.
    public static func name(of nameOrPath: String) -> String {
        isPath(nameOrPath) ? URL(fileURLWithPath: nameOrPath).deletingPathExtension().lastPathComponent : nameOrPath
    }

    /// A recipe name (a file in the library's `recipes/`) or a path to any YAML file.
    public func locate(_ nameOrPath: String) throws -> String {
        if Self.isPath(nameOrPath) {
            let path = FileStore.absolute(nameOrPath, relativeTo: currentDirectory)
            guard FileStore.isRegularFile(path) else {
                throw VMFactoryError(.notFound, "no recipe file at \(nameOrPath)", hint: "give a path to a YAML recipe, or a name from `vmfactory recipes`")
            }
            return path
        }
        for ext in ["yaml", "yml"] {
            let path = library.recipesDirectory + "/\(nameOrPath).\(ext)"
            if FileStore.isRegularFile(path) { return path }
        }
        let known = library.recipeNames()
        throw VMFactoryError(
            .notFound, "unknown recipe '\(nameOrPath)'",
            hint: known.isEmpty
                ? "no recipes in \(library.recipesDirectory); give a path to a YAML recipe"
                : "known recipes: \(known.joined(separator: ", ")); or give a path to a YAML file"
        )
    }

    public func load(_ nameOrPath: String) throws -> Recipe {
        try load(path: locate(nameOrPath))
    }

    public func load(path: String) throws -> Recipe {
        let data = try FileStore.readData(path)
        let display = FileStore.displayPath(path)
        guard let text = String(data: data, encoding: .utf8) else {
            throw VMFactoryError(.invalidRecipe, "\(display): not UTF-8 text")
        }
        let node: Node
        do {
            guard let composed = try Yams.compose(yaml: text) else {
                throw VMFactoryError(.invalidRecipe, "\(display): the recipe is empty", hint: "see README.md, section Recipes, for the format")
            }
            node = composed
        } catch let error as YamlError {
            throw Self.syntaxError(error, file: display)
        }
        let locator = NodeLocator(file: display, root: node)

        let document: RecipeDocument
        do {
            document = try YAMLDecoder().decode(RecipeDocument.self, from: node)
        } catch let error as RecipeSchemaError {
            throw locator.error(at: error.path, error.message, key: error.pointsAtKey)
        } catch let error as DecodingError {
            throw locator.error(for: error)
        }
        let validator = RecipeValidator(locator: locator, library: library, recipePath: path, name: Self.name(of: path))
        return try validator.validate(document, digest: .of(data))
    }

    /// Every recipe in the library with its one-line description (or why it does not load).
    public func list() -> [(name: String, path: String, summary: Result<String, VMFactoryError>)] {
        library.recipeNames().map { name in
            let path = (try? locate(name)) ?? library.recipesDirectory + "/\(name).yaml"
            do {
                return (name, path, .success(try load(path: path).description))
            } catch let error as VMFactoryError {
                return (name, path, .failure(error))
            } catch {
                return (name, path, .failure(VMFactoryError(.invalidRecipe, "\(error)")))
            }
        }
    }

    static func syntaxError(_ error: YamlError, file: String) -> VMFactoryError {
        let hint = "fix the YAML syntax at that position"
        switch error {
        case .scanner(let context, let problem, let mark, _),
             .parser(let context, let problem, let mark, _),
             .composer(let context, let problem, let mark, _):
            var message = "\(file):\(mark.line):\(mark.column): YAML syntax error: \(problem)"
            if let context { message += " (\(context.text) at line \(context.mark.line), column \(context.mark.column))" }
            return VMFactoryError(.invalidRecipe, message, hint: hint)
        case .duplicatedKeysInMapping(let duplicates, let context):
            let names = duplicates.map { "'\($0)'" }.joined(separator: ", ")
            return VMFactoryError(
                .invalidRecipe, "\(file):\(context.mark.line):\(context.mark.column): key \(names) appears more than once in this mapping",
                hint: "a key may appear once per mapping; merge the two entries"
            )
        default:
            return VMFactoryError(.invalidRecipe, "\(file): YAML error: \(error)", hint: hint)
        }
    }
}

/// Maps coding paths to positions in the composed YAML tree.
struct NodeLocator {
    var file: String
    var root: Node

    /// The node at `path`, or the deepest existing node along it.
    func node(at path: [any CodingKey], key wantKey: Bool = false) -> (node: Node, exact: Bool) {
        var current = root
        for (index, component) in path.enumerated() {
            let isLast = index == path.count - 1
            if let mapping = current.mapping {
                guard let pair = mapping.first(where: { $0.key.string == component.stringValue }) else { return (current, false) }
                current = (isLast && wantKey) ? pair.key : pair.value
            } else if let sequence = current.sequence, let position = component.intValue, position < sequence.count {
                current = sequence[sequence.index(sequence.startIndex, offsetBy: position)]
            } else {
                return (current, false)
            }
        }
        return (current, true)
    }

    func position(_ node: Node) -> String {
        guard let mark = node.mark else { return file }
        return "\(file):\(mark.line):\(mark.column)"
    }

    func error(at path: [any CodingKey], _ message: String, key: Bool = false, hint: String? = nil) -> VMFactoryError {
        let found = node(at: path, key: key)
        return VMFactoryError(.invalidRecipe, "\(position(found.node)): \(Self.describe(path)): \(message)", hint: hint)
    }

    func error(for error: DecodingError) -> VMFactoryError {
        switch error {
        case .keyNotFound(let key, let context):
            let place = context.codingPath.isEmpty ? "the top level" : Self.describe(context.codingPath)
            let found = node(at: context.codingPath)
            return VMFactoryError(
                .invalidRecipe, "\(position(found.node)): missing required key '\(key.stringValue)' in \(place)",
                hint: "add `\(key.stringValue):`; see README.md, section Recipes"
            )
        case .typeMismatch(let type, let context), .valueNotFound(let type, let context):
            let found = node(at: context.codingPath)
            let actual = found.exact ? Self.kind(of: found.node) : "nothing"
            return VMFactoryError(
                .invalidRecipe,
                "\(position(found.node)): \(Self.describe(context.codingPath)): expected \(Self.describe(type)), found \(actual)"
            )
        case .dataCorrupted(let context):
            return self.error(at: context.codingPath, context.debugDescription)
        @unknown default:
            return VMFactoryError(.invalidRecipe, "\(file): \(error)")
        }
    }

    static func describe(_ path: [any CodingKey]) -> String {
        var text = ""
        for component in path {
            if let index = component.intValue {
                text += "[\(index)]"
            } else {
                text += (text.isEmpty ? "" : ".") + component.stringValue
            }
        }
        return text.isEmpty ? "recipe" : text
    }

    static func describe(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: return "a string"
        case is Int.Type: return "an integer"
        case is Bool.Type: return "true or false"
        case is [String].Type, is Node.Sequence.Type: return "a list"
        case is Node.Scalar.Type: return "a single value"
        default: return "a mapping"
        }
    }

    static func kind(of node: Node) -> String {
        switch node {
        case .scalar(let scalar): return scalar.string.isEmpty ? "an empty value" : "the scalar '\(scalar.string)'"
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }
}
