import Foundation
import VMFactoryArchive
import VMFactoryCore

/// A Kconfig dependency expression (`depends on A && (B || !C)`, `X = "y"`).
public indirect enum KconfigExpression: Sendable, Hashable {
    case symbol(String)
    case constant(String)
    /// Something vmfactory cannot evaluate, such as a `$(cc-option,...)` macro; taken as met.
    case opaque(String)
    case not(KconfigExpression)
    case and(KconfigExpression, KconfigExpression)
    case or(KconfigExpression, KconfigExpression)
    case compare(String, KconfigExpression, KconfigExpression)

    /// Tristate value: 0 (n), 1 (m), 2 (y), with `symbols` the resolved config.
    public func evaluate(_ config: KernelConfig) -> Int {
        switch self {
        case .symbol(let name):
            switch config[name] {
            case .yes: return 2
            case .module: return 1
            default: return 0
            }
        case .constant(let text):
            return text == "y" ? 2 : text == "m" ? 1 : 0
        case .opaque:
            return 2
        case .not(let inner):
            return 2 - inner.evaluate(config)
        case .and(let lhs, let rhs):
            return min(lhs.evaluate(config), rhs.evaluate(config))
        case .or(let lhs, let rhs):
            return max(lhs.evaluate(config), rhs.evaluate(config))
        case .compare(let op, let lhs, let rhs):
            let a = lhs.stringValue(config), b = rhs.stringValue(config)
            let result: Bool
            if let x = ConfigValue.numericValue(a), let y = ConfigValue.numericValue(b), op != "=", op != "!=" {
                switch op {
                case "<": result = x < y
                case "<=": result = x <= y
                case ">": result = x > y
                default: result = x >= y
                }
            } else {
                switch op {
                case "=": result = a == b
                case "!=": result = a != b
                case "<": result = a < b
                case "<=": result = a <= b
                case ">": result = a > b
                default: result = a >= b
                }
            }
            return result ? 2 : 0
        }
    }

    func stringValue(_ config: KernelConfig) -> String {
        switch self {
        case .symbol(let name):
            switch config[name] {
            case .string(let text): return text
            case .number(let text): return text
            case .yes: return "y"
            case .module: return "m"
            case .no: return config.contains(name) ? "n" : "n"
            }
        case .constant(let text): return text
        default: return ["n", "m", "y"][evaluate(config)]
        }
    }

    /// The terms of a top-level conjunction.
    public var conjuncts: [KconfigExpression] {
        if case .and(let lhs, let rhs) = self { return lhs.conjuncts + rhs.conjuncts }
        return [self]
    }

    /// Written like menuconfig's help: every symbol followed by its value, `FUSE_FS [=n]`.
    public func annotated(_ config: KernelConfig) -> String {
        switch self {
        case .symbol(let name): return "\(name) [=\(stringValue(config))]"
        case .constant(let text): return text.allSatisfy({ $0.isNumber }) || ["y", "m", "n"].contains(text) ? text : "\"\(text)\""
        case .opaque(let text): return text
        case .not(let inner): return "!" + inner.annotatedOperand(config)
        case .and(let lhs, let rhs): return lhs.annotatedOperand(config, parent: "&&") + " && " + rhs.annotatedOperand(config, parent: "&&")
        case .or(let lhs, let rhs): return lhs.annotatedOperand(config, parent: "||") + " || " + rhs.annotatedOperand(config, parent: "||")
        case .compare(let op, let lhs, let rhs): return "\(lhs.annotated(config)) \(op) \(rhs.annotated(config))"
        }
    }

    private func annotatedOperand(_ config: KernelConfig, parent: String? = nil) -> String {
        switch self {
        case .and where parent == "&&", .or where parent == "||", .symbol, .constant, .opaque, .not:
            return annotated(config)
        default:
            return "(" + annotated(config) + ")"
        }
    }
}

/// Parses Kconfig expressions: `||` binds loosest, then `&&`, then `!`, then comparisons.
struct KconfigExpressionParser {
    private var tokens: [String]
    private var position = 0

    init(_ text: String) {
        tokens = Self.tokenize(text)
    }

    static func parse(_ text: String) -> KconfigExpression? {
        var parser = KconfigExpressionParser(text)
        guard let expression = parser.parseOr(), parser.position == parser.tokens.count else { return nil }
        return expression
    }

    static func tokenize(_ text: String) -> [String] {
        var tokens: [String] = []
        let characters = Array(text)
        var i = 0
        while i < characters.count {
            let c = characters[i]
            if c == " " || c == "\t" {
                i += 1
            } else if c == "\"" || c == "'" {
                var j = i + 1
                var value = ""
                while j < characters.count, characters[j] != c {
                    if characters[j] == "\\", j + 1 < characters.count { j += 1 }
                    value.append(characters[j])
                    j += 1
                }
                tokens.append("\"" + value)
                i = j + 1
            } else if c == "$", i + 1 < characters.count, characters[i + 1] == "(" {
                var depth = 0
                var j = i + 1
                repeat {
                    if characters[j] == "(" { depth += 1 }
                    if characters[j] == ")" { depth -= 1 }
                    j += 1
                } while j < characters.count && depth > 0
                tokens.append(String(characters[i..<j]))
                i = j
            } else if "&|!=<>".contains(c) {
                let pair = i + 1 < characters.count ? String([c, characters[i + 1]]) : ""
                if ["&&", "||", "!=", "<=", ">="].contains(pair) {
                    tokens.append(pair)
                    i += 2
                } else {
                    tokens.append(String(c))
                    i += 1
                }
            } else if c == "(" || c == ")" {
                tokens.append(String(c))
                i += 1
            } else {
                var j = i
                while j < characters.count, !" \t\"'&|!=<>()".contains(characters[j]) { j += 1 }
                tokens.append(String(characters[i..<j]))
                i = j
            }
        }
        return tokens
    }

    private var current: String? { position < tokens.count ? tokens[position] : nil }

    private mutating func parseOr() -> KconfigExpression? {
        guard var lhs = parseAnd() else { return nil }
        while current == "||" {
            position += 1
            guard let rhs = parseAnd() else { return nil }
            lhs = .or(lhs, rhs)
        }
        return lhs
    }

    private mutating func parseAnd() -> KconfigExpression? {
        guard var lhs = parseNot() else { return nil }
        while current == "&&" {
            position += 1
            guard let rhs = parseNot() else { return nil }
            lhs = .and(lhs, rhs)
        }
        return lhs
    }

    private mutating func parseNot() -> KconfigExpression? {
        if current == "!" {
            position += 1
            return parseNot().map { .not($0) }
        }
        return parseComparison()
    }

    private mutating func parseComparison() -> KconfigExpression? {
        guard let lhs = parsePrimary() else { return nil }
        if let op = current, ["=", "!=", "<", "<=", ">", ">="].contains(op) {
            position += 1
            guard let rhs = parsePrimary() else { return nil }
            return .compare(op, lhs, rhs)
        }
        return lhs
    }

    private mutating func parsePrimary() -> KconfigExpression? {
        guard let token = current else { return nil }
        position += 1
        if token == "(" {
            let inner = parseOr()
            guard current == ")" else { return nil }
            position += 1
            return inner
        }
        if token.hasPrefix("\"") { return .constant(String(token.dropFirst())) }
        if token.hasPrefix("$(") { return .opaque(token) }
        if ["y", "m", "n"].contains(token) || ConfigValue.isNumber(token) { return .constant(token) }
        if ["&&", "||", "!", ")", "=", "!=", "<", "<=", ">", ">="].contains(token) { return nil }
        return .symbol(token)
    }
}
