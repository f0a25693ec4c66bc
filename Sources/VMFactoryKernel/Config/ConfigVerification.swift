import Foundation
import VMFactoryArchive
import VMFactoryCore

/// The result of checking a resolved .config against what the fragments asked for.
public struct ConfigVerification: Sendable, Codable {
    public struct Miss: Sendable, Codable {
        public var symbol: String
        public var requested: ConfigValue
        public var resolved: ConfigValue
        /// The fragment file and line that asked for the value.
        public var requestedAt: String
        /// Unmet dependencies and other causes, as far as the Kconfig files tell.
        public var reasons: [String]
    }

    public var recipe: String
    public var target: Target
    public var config: String
    public var checked: Int
    public var misses: [Miss]
    public var warnings: [String]

    public var passed: Bool { misses.isEmpty }

    /// Compares every request with the resolved value; explains each miss with `kconfig`.
    public static func verify(
        recipe: String, target: Target, configPath: String,
        requests: [ConfigRequest], resolved config: KernelConfig,
        kconfig: Kconfig?, warnings: [String]
    ) -> ConfigVerification {
        var misses: [Miss] = []
        for request in requests {
            let resolved = config[request.symbol]
            guard !resolved.satisfies(request.value, modulesEnabled: config.modulesEnabled) else { continue }
            let reasons = kconfig?.explain(request, resolved: resolved, config: config) ?? []
            misses.append(Miss(symbol: request.symbol, requested: request.value, resolved: resolved, requestedAt: request.location, reasons: reasons))
        }
        return ConfigVerification(recipe: recipe, target: target, config: configPath, checked: requests.count, misses: misses, warnings: warnings)
    }

    /// Throws, naming every miss, unless every request landed. The build steps stop here
    /// rather than compile a kernel that is not what the fragments ask for.
    public func requirePassed() throws {
        guard !passed else { return }
        throw VMFactoryError(
            .configNotVerified,
            "\(target): \(misses.count) of \(checked) requested settings did not land; not building",
            hint: "fix the fragments or the dependencies named above; the resolved config is \(config)",
            details: missLines
        )
    }

    public var missLines: [String] {
        misses.flatMap { miss -> [String] in
            ["CONFIG_\(miss.symbol): requested \(miss.requested) at \(miss.requestedAt), resolved \(miss.resolved)"]
                + miss.reasons.map { "    " + $0 }
        }
    }
}
