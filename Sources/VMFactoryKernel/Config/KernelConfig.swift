import Foundation
import VMFactoryArchive
import VMFactoryCore

/// A kernel `.config`: symbol values in file order.
public struct KernelConfig: Sendable, Equatable {
    public private(set) var entries: [(symbol: String, value: ConfigValue)]
    private var index: [String: Int]

    public static func == (lhs: KernelConfig, rhs: KernelConfig) -> Bool {
        lhs.entries.map(\.symbol) == rhs.entries.map(\.symbol) && lhs.entries.map(\.value) == rhs.entries.map(\.value)
    }

    public init(parsing text: String) {
        entries = []
        index = [:]
        for rawLine in text.split(separator: "\n") {
            let line = String(rawLine)
            if let symbol = ConfigFragment.notSetSymbol(line) {
                set(symbol, .no)
            } else if line.hasPrefix("CONFIG_"), let equals = line.firstIndex(of: "=") {
                let symbol = String(line[line.index(line.startIndex, offsetBy: 7)..<equals])
                if let value = ConfigValue(parsing: String(line[line.index(after: equals)...])) {
                    set(symbol, value)
                }
            }
        }
    }

    public static func load(_ path: String) throws -> KernelConfig {
        KernelConfig(parsing: try FileStore.readText(path))
    }

    /// The resolved value; a symbol absent from the file is off.
    public subscript(symbol: String) -> ConfigValue {
        index[symbol].map { entries[$0].value } ?? .no
    }

    public func contains(_ symbol: String) -> Bool { index[symbol] != nil }

    public var modulesEnabled: Bool { self["MODULES"] == .yes }

    public mutating func set(_ symbol: String, _ value: ConfigValue) {
        if let position = index[symbol] {
            entries[position].value = value
        } else {
            index[symbol] = entries.count
            entries.append((symbol, value))
        }
    }

    /// The same config with every request's value written in.
    public func merging(_ requests: [ConfigRequest]) -> KernelConfig {
        var merged = self
        for request in requests { merged.set(request.symbol, request.value) }
        return merged
    }

    public var text: String {
        entries.map { $0.value.line(for: $0.symbol) }.joined(separator: "\n") + "\n"
    }
}
