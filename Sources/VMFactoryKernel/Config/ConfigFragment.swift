import Foundation
import VMFactoryArchive
import VMFactoryCore

/// One symbol setting asked for by a fragment, with where it was asked.
public struct ConfigRequest: Sendable, Hashable, Codable {
    public var symbol: String
    public var value: ConfigValue
    public var file: String
    public var line: Int

    public var location: String { "\(FileStore.displayPath(file)):\(line)" }
}

/// Parses fragment files (`CONFIG_X=y`, `# CONFIG_X is not set`, comments) and combines them.
public enum ConfigFragment {
    public static func parse(_ text: String, file: String) throws -> [ConfigRequest] {
        var requests: [ConfigRequest] = []
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            let number = index + 1
            if line.isEmpty { continue }
            if line.hasPrefix("#") {
                if let symbol = notSetSymbol(line) {
                    requests.append(ConfigRequest(symbol: symbol, value: .no, file: file, line: number))
                }
                continue
            }
            guard line.hasPrefix("CONFIG_"), let equals = line.firstIndex(of: "=") else {
                throw VMFactoryError(
                    .invalidRecipe, "\(FileStore.displayPath(file)):\(number): cannot read '\(line)'",
                    hint: "fragment lines look like CONFIG_NAME=y, CONFIG_NAME=\"text\", CONFIG_NAME=123 or # CONFIG_NAME is not set"
                )
            }
            let symbol = String(line[line.index(line.startIndex, offsetBy: 7)..<equals])
            let raw = String(line[line.index(after: equals)...])
            guard isSymbolName(symbol), let value = ConfigValue(parsing: raw) else {
                throw VMFactoryError(
                    .invalidRecipe, "\(FileStore.displayPath(file)):\(number): cannot read '\(line)'",
                    hint: "values are y, m, n, a \"quoted string\" or a number"
                )
            }
            requests.append(ConfigRequest(symbol: symbol, value: value, file: file, line: number))
        }
        return requests
    }

    /// `# CONFIG_X is not set` → X.
    static func notSetSymbol(_ line: String) -> String? {
        guard line.hasPrefix("# CONFIG_"), line.hasSuffix(" is not set") else { return nil }
        let symbol = String(line.dropFirst("# CONFIG_".count).dropLast(" is not set".count))
        return isSymbolName(symbol) ? symbol : nil
    }

    static func isSymbolName(_ name: String) -> Bool {
        !name.isEmpty && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }
    }

    public struct Combined: Sendable {
        /// One request per symbol, in the order first asked.
        public var requests: [ConfigRequest]
        public var warnings: [String]
    }

    /// Reads and combines fragment files. Two different values for one symbol is an error
    /// naming both lines; the same value twice is a warning.
    public static func combine(_ files: [FragmentFile]) throws -> Combined {
        var bySymbol: [String: ConfigRequest] = [:]
        var order: [String] = []
        var warnings: [String] = []
        var conflicts: [String] = []
        for file in files {
            for request in try parse(FileStore.readText(file.path), file: file.path) {
                if let first = bySymbol[request.symbol] {
                    if first.value == request.value {
                        warnings.append("CONFIG_\(request.symbol)=\(request.value) is set twice: \(first.location) and \(request.location)")
                    } else {
                        conflicts.append("CONFIG_\(request.symbol): \(first.location) asks for \(first.value), \(request.location) asks for \(request.value)")
                    }
                    continue
                }
                bySymbol[request.symbol] = request
                order.append(request.symbol)
            }
        }
        if !conflicts.isEmpty {
            throw VMFactoryError(
                .fragmentConflict, "fragments disagree on \(conflicts.count == 1 ? "a symbol" : "\(conflicts.count) symbols")",
                hint: "keep one value per symbol: remove or change one of the lines",
                details: conflicts
            )
        }
        return Combined(requests: order.compactMap { bySymbol[$0] }, warnings: warnings)
    }
}
