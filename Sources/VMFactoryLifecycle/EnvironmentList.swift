import Foundation
import VMFactoryCore

/// NAME=VALUE entries where a later value of a name replaces the earlier one in place: a run's
/// environment (the image's Env, `--env-file`, `-e`) and an exec's.
public struct EnvironmentList: Sendable {
    public init() {}

    /// An exec's own environment (`--env-file`, then `-e`), which goes over the run's.
    public static func exec(files: [(name: String, text: String)], entries: [String], hostEnvironment: [String: String]) throws -> [String] {
        var environment = EnvironmentList()
        try environment.add(files: files, entries: entries, hostEnvironment: hostEnvironment)
        return environment.entries
    }

    /// Each `--env-file` in order (# comments and blank lines skipped), then each `-e`.
    public mutating func add(files: [(name: String, text: String)], entries: [String], hostEnvironment: [String: String]) throws {
        for file in files {
            // "\r\n" is one Character, a line break like "\n".
            for (number, line) in file.text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
                let entry = String(line)
                let trimmed = entry.trimmingCharacters(in: .whitespaces)
                if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
                try set(entry, from: "\(file.name):\(number + 1)", hostEnvironment: hostEnvironment)
            }
        }
        for entry in entries { try set(entry, from: "-e", hostEnvironment: hostEnvironment) }
    }

    public private(set) var entries: [String] = []
    private var index: [String: Int] = [:]

    /// `NAME=VALUE`, or `NAME` alone, which takes vmfactory's own value (and is skipped when
    /// vmfactory has none), as docker does.
    public mutating func set(_ entry: String, from origin: String, hostEnvironment: [String: String]) throws {
        let name: String
        let value: String
        if let equals = entry.firstIndex(of: "=") {
            name = String(entry[..<equals])
            value = String(entry[entry.index(after: equals)...])
        } else {
            name = entry
            guard let host = hostEnvironment[entry] else { return }
            value = host
        }
        guard !name.isEmpty, !name.contains(where: { $0.isWhitespace || $0 == "\0" }), !value.contains("\0") else {
            throw VMFactoryError(.invalidArgument, "\(origin): '\(entry)' is not NAME=VALUE", hint: "write environment entries as NAME=VALUE, or NAME to pass vmfactory's own value")
        }
        let full = name + "=" + value
        if let existing = index[name] {
            entries[existing] = full
        } else {
            index[name] = entries.count
            entries.append(full)
        }
    }
}
