import Foundation
import VMFactoryArchive
import VMFactoryCore

/// The value of one Kconfig symbol as written in a .config or a fragment.
public enum ConfigValue: Sendable, Hashable, CustomStringConvertible {
    case yes
    case module
    /// `# CONFIG_X is not set`, `CONFIG_X=n`, or absent from a .config.
    case no
    case string(String)
    /// Decimal or hexadecimal, kept as written.
    case number(String)

    public init?(parsing raw: String) {
        switch raw {
        case "y": self = .yes
        case "m": self = .module
        case "n": self = .no
        default:
            if raw.hasPrefix("\""), raw.hasSuffix("\""), raw.count >= 2 {
                self = .string(Self.unescape(String(raw.dropFirst().dropLast())))
            } else if Self.isNumber(raw) {
                self = .number(raw)
            } else {
                return nil
            }
        }
    }

    /// The text after `=` (or `n`).
    public var description: String {
        switch self {
        case .yes: return "y"
        case .module: return "m"
        case .no: return "n"
        case .string(let text): return "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        case .number(let text): return text
        }
    }

    public func line(for symbol: String) -> String {
        self == .no ? "# CONFIG_\(symbol) is not set" : "CONFIG_\(symbol)=\(description)"
    }

    /// Whether a resolved value satisfies a requested one. A module request is met by `y`
    /// in a kernel without module support, where Kconfig turns every `m` into `y`.
    public func satisfies(_ requested: ConfigValue, modulesEnabled: Bool) -> Bool {
        switch (requested, self) {
        case (.module, .yes): return !modulesEnabled
        case (.number(let a), .number(let b)): return Self.numericValue(a) == Self.numericValue(b)
        default: return requested == self
        }
    }

    static func isNumber(_ text: String) -> Bool {
        numericValue(text) != nil
    }

    static func numericValue(_ text: String) -> Int64? {
        let lowered = text.lowercased()
        if lowered.hasPrefix("0x") { return Int64(lowered.dropFirst(2), radix: 16) }
        return Int64(lowered)
    }

    static func unescape(_ text: String) -> String {
        var result = ""
        var escaped = false
        for character in text {
            if escaped {
                result.append(character)
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else {
                result.append(character)
            }
        }
        return result
    }
}

extension ConfigValue: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let value = ConfigValue(parsing: text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a config value: \(text)"))
        }
        self = value
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
