import Foundation
import VMFactoryArchive
import VMFactoryCore

/// What the kernel's Kconfig files say about each symbol, enough to explain why a requested
/// value did not land: its dependencies (from `depends on`, enclosing `if` blocks, menus and
/// choices), whether it has a prompt, and which symbols `select` it.
public struct Kconfig: Sendable {
    public struct Definition: Sendable {
        public var file: String
        public var line: Int
        /// Every condition the definition sits under, outermost first.
        public var dependencies: [KconfigExpression]
        public var hasPrompt: Bool
        public var promptCondition: KconfigExpression?
    }

    public struct Selection: Sendable {
        public var by: String
        public var condition: KconfigExpression?
        public var isImply: Bool
    }

    public private(set) var definitions: [String: [Definition]] = [:]
    public private(set) var selectedBy: [String: [Selection]] = [:]
    public private(set) var filesRead = 0

    /// Reads `Kconfig` at the top of `sourceTree` and everything it sources, for `target`.
    public static func load(sourceTree: String, target: Target) throws -> Kconfig {
        var parser = KconfigParser(root: sourceTree, variables: ["SRCARCH": target.sourceArch, "ARCH": target.makeArch])
        try parser.parseFile("Kconfig")
        var kconfig = Kconfig()
        kconfig.definitions = parser.definitions
        kconfig.selectedBy = parser.selectedBy
        kconfig.filesRead = parser.filesRead
        return kconfig
    }

    public func isDefined(_ symbol: String) -> Bool { definitions[symbol] != nil }

    /// Why `request` resolved to `resolved`, in words, as far as the Kconfig files tell.
    public func explain(_ request: ConfigRequest, resolved: ConfigValue, config: KernelConfig) -> [String] {
        guard let definitions = definitions[request.symbol] else {
            return ["CONFIG_\(request.symbol) is not defined anywhere in this kernel's Kconfig files: misspelt, removed in this version, or for another architecture"]
        }
        var reasons: [String] = []
        let wanted = request.value
        if wanted == .yes || wanted == .module || isValueRequest(wanted) {
            let needed = wanted == .module ? 1 : 2
            let options = definitions.map { definition -> [String] in
                var unmet = definition.dependencies.flatMap(\.conjuncts).filter { $0.evaluate(config) < needed }.map { "depends on \($0.annotated(config))" }
                if let condition = definition.promptCondition, condition.evaluate(config) == 0 {
                    unmet.append("its prompt is only shown if \(condition.annotated(config))")
                }
                return unmet
            }
            if options.contains(where: \.isEmpty) {
                // Some definition has its dependencies met: the symbol was visible.
                if !definitions.contains(where: \.hasPrompt) {
                    let selectors = (selectedBy[request.symbol] ?? []).filter { !$0.isImply }
                    let list = selectors.prefix(12).map { selection in
                        "\(selection.by) [=\(config[selection.by])]" + (selection.condition.map { " if \($0.annotated(config))" } ?? "")
                    }
                    reasons.append(
                        "CONFIG_\(request.symbol) has no prompt: only another option can turn it on with `select`"
                            + (list.isEmpty ? "" : "; selected by: " + list.joined(separator: ", "))
                    )
                } else {
                    reasons.append("its dependencies are met; a choice, a range or another fragment may have overridden the value")
                }
            } else {
                for (definition, unmet) in zip(definitions, options) {
                    let place = definitions.count > 1 ? " (as defined at \(definition.file):\(definition.line))" : ""
                    reasons += unmet.map { $0 + place }
                }
            }
        } else if wanted == .no {
            let forcing = (selectedBy[request.symbol] ?? []).filter { selection in
                !selection.isImply && config[selection.by] != .no && (selection.condition?.evaluate(config) ?? 2) > 0
            }
            if !forcing.isEmpty {
                reasons.append("selected by " + forcing.map { "\($0.by) [=\(config[$0.by])]" }.joined(separator: ", "))
            } else if !definitions.contains(where: \.hasPrompt) {
                reasons.append("CONFIG_\(request.symbol) has no prompt: its value comes from its defaults and cannot be turned off directly")
            }
        }
        return reasons
    }

    private func isValueRequest(_ value: ConfigValue) -> Bool {
        switch value {
        case .string, .number: return true
        default: return false
        }
    }
}

/// A line-oriented reader of Kconfig files, tracking the `if`, `menu` and `choice` blocks
/// that wrap each `config` entry.
struct KconfigParser {
    let root: String
    let variables: [String: String]
    var definitions: [String: [Kconfig.Definition]] = [:]
    var selectedBy: [String: [Kconfig.Selection]] = [:]
    var filesRead = 0

    private enum Block {
        case condition(KconfigExpression?)
        /// A menu or choice: its own `depends on` lines apply to everything inside.
        case group(kind: String, conditions: [KconfigExpression])
    }
    private var blocks: [Block] = []
    /// The entry the attribute lines belong to.
    private enum Current {
        case none
        case config(symbol: String, definition: Kconfig.Definition)
        case group
        case comment
    }
    private var current: Current = .none

    init(root: String, variables: [String: String]) {
        self.root = root
        self.variables = variables
    }

    mutating func parseFile(_ relative: String, optional: Bool = false) throws {
        let path = root + "/" + relative
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            if optional { return }
            throw VMFactoryError(.notFound, "cannot read Kconfig file \(path)")
        }
        filesRead += 1
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var number = 0
        var helpIndent: Int? = nil
        var inHelp = false
        while number < lines.count {
            var line = lines[number]
            let lineNumber = number + 1
            number += 1
            if inHelp {
                let indent = Self.indentation(line)
                if line.trimmingCharacters(in: .whitespaces).isEmpty { continue }
                if helpIndent == nil { helpIndent = indent }
                if indent >= helpIndent! { continue }
                inHelp = false
                helpIndent = nil
            }
            while line.hasSuffix("\\"), number < lines.count {
                line = String(line.dropLast()) + " " + lines[number]
                lines[number] = ""
                number += 1
            }
            let stripped = Self.stripComment(line).trimmingCharacters(in: .whitespaces)
            if stripped.isEmpty { continue }
            let (keyword, rest) = Self.splitKeyword(stripped)
            if try apply(keyword, rest, file: relative, line: lineNumber) {
                inHelp = true
                helpIndent = nil
            }
        }
        finishEntry()
    }

    /// One statement of a Kconfig file; returns true when it starts a help text.
    ///
    /// Longer than the other functions on purpose: one case per Kconfig keyword, so that the
    /// dispatch reads like the language's own list of statements (Documentation/kbuild/
    /// kconfig-language.rst); split up, the cases that share `current` would be scattered.
    private mutating func apply(_ keyword: String, _ rest: String, file relative: String, line lineNumber: Int) throws -> Bool {
        switch keyword {
        case "config", "menuconfig":
            finishEntry()
            let definition = Kconfig.Definition(file: relative, line: lineNumber, dependencies: inheritedConditions(), hasPrompt: false, promptCondition: nil)
            current = .config(symbol: rest, definition: definition)
        case "choice":
            finishEntry()
            blocks.append(.group(kind: "choice", conditions: []))
            current = .group
        case "menu":
            finishEntry()
            blocks.append(.group(kind: "menu", conditions: []))
            current = .group
        case "endchoice", "endmenu", "endif":
            finishEntry()
            if !blocks.isEmpty { blocks.removeLast() }
            current = .none
        case "if":
            finishEntry()
            blocks.append(.condition(KconfigExpressionParser.parse(substitute(rest))))
            current = .none
        case "comment":
            finishEntry()
            current = .comment
        case "source", "osource", "rsource", "orsource":
            finishEntry()
            current = .none
            let target = substitute(Self.unquote(rest))
            let resolved = keyword.hasPrefix("r") || keyword.hasPrefix("or")
                ? URL(fileURLWithPath: relative).deletingLastPathComponent().appendingPathComponent(target).relativePath
                : target
            try parseFile(resolved, optional: keyword.hasPrefix("o"))
        case "mainmenu":
            return false
        case "help", "---help---":
            return true
        case "depends":
            let expressionText = rest.hasPrefix("on ") ? String(rest.dropFirst(3)) : rest
            guard let expression = KconfigExpressionParser.parse(substitute(expressionText)) else { return false }
            switch current {
            case .config(let symbol, var definition):
                definition.dependencies.append(expression)
                current = .config(symbol: symbol, definition: definition)
            case .group:
                if case .group(let kind, var conditions) = blocks.last {
                    conditions.append(expression)
                    blocks[blocks.count - 1] = .group(kind: kind, conditions: conditions)
                }
            default:
                break
            }
        case "bool", "tristate", "string", "int", "hex", "prompt", "def_bool", "def_tristate":
            guard case .config(let symbol, var definition) = current else { return false }
            let isDefault = keyword.hasPrefix("def_")
            if !isDefault, rest.hasPrefix("\"") || rest.hasPrefix("'") {
                definition.hasPrompt = true
                if let range = Self.conditionRange(rest) {
                    definition.promptCondition = KconfigExpressionParser.parse(substitute(String(rest[range])))
                }
            }
            current = .config(symbol: symbol, definition: definition)
        case "select", "imply":
            guard case .config(let symbol, _) = current else { return false }
            let words = rest.split(separator: " ", maxSplits: 1)
            guard let selected = words.first.map(String.init) else { return false }
            var condition: KconfigExpression? = nil
            if words.count > 1, words[1].hasPrefix("if ") {
                condition = KconfigExpressionParser.parse(substitute(String(words[1].dropFirst(3))))
            }
            selectedBy[selected, default: []].append(Kconfig.Selection(by: symbol, condition: condition, isImply: keyword == "imply"))
        default:
            return false
        }
        return false
    }

    private mutating func finishEntry() {
        if case .config(let symbol, let definition) = current {
            definitions[symbol, default: []].append(definition)
        }
        current = .none
    }

    private func inheritedConditions() -> [KconfigExpression] {
        blocks.flatMap { block -> [KconfigExpression] in
            switch block {
            case .condition(let expression): return expression.map { [$0] } ?? []
            case .group(_, let conditions): return conditions
            }
        }
    }

    /// Replaces `$(SRCARCH)`-style variables; function macros such as `$(cc-option,…)` stay.
    private func substitute(_ text: String) -> String {
        var result = text
        for (name, value) in variables {
            result = result.replacingOccurrences(of: "$(\(name))", with: value)
        }
        return result
    }

    static func indentation(_ line: String) -> Int {
        var width = 0
        for character in line {
            if character == " " { width += 1 } else if character == "\t" { width = (width / 8 + 1) * 8 } else { break }
        }
        return width
    }

    static func stripComment(_ line: String) -> String {
        var quote: Character? = nil
        for (offset, character) in line.enumerated() {
            if let open = quote {
                if character == open { quote = nil }
            } else if character == "\"" || character == "'" {
                quote = character
            } else if character == "#" {
                return String(line.prefix(offset))
            }
        }
        return line
    }

    static func splitKeyword(_ line: String) -> (String, String) {
        guard let space = line.firstIndex(where: { $0 == " " || $0 == "\t" }) else { return (line, "") }
        return (String(line[..<space]), line[space...].trimmingCharacters(in: .whitespaces))
    }

    static func unquote(_ text: String) -> String {
        var value = text
        if value.hasPrefix("\"") || value.hasPrefix("'") { value.removeFirst() }
        if value.hasSuffix("\"") || value.hasSuffix("'") { value.removeLast() }
        return value
    }

    /// The expression after `if` that follows a quoted prompt: `bool "text" if EXPERT`.
    static func conditionRange(_ text: String) -> Range<String.Index>? {
        guard let open = text.first else { return nil }
        guard let close = text.dropFirst().firstIndex(of: open) else { return nil }
        let after = text[text.index(after: close)...]
        guard let ifRange = after.range(of: " if ") else { return nil }
        return ifRange.upperBound..<text.endIndex
    }
}
