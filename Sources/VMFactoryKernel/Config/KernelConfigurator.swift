import Foundation
import VMFactoryArchive
import VMFactoryCore

/// Resolves one target's kernel configuration: base config, fragments merged in,
/// `olddefconfig`, then verification that every request landed.
public struct KernelConfigurator: Sendable {
    public var runner: any ProcessRunner
    public var console: Console

    public init(runner: any ProcessRunner, console: Console) {
        self.runner = runner
        self.console = console
    }

    /// The make goals and file steps, in order, for a base config.
    public static func baseGoals(_ base: BaseConfig) -> [String] {
        switch base {
        case .tinyconfig: return ["tinyconfig"]
        case .allnoconfig: return ["allnoconfig"]
        case .defconfig: return ["defconfig"]
        case .file: return ["olddefconfig"]
        }
    }

    /// Checks a config that did not come from `configure` (a filed one, or the one make
    /// rewrote) against the target's fragments. Misses are not explained.
    static func check(_ text: String, shownAs configPath: String, recipe: String, target: TargetRecipe) throws -> ConfigVerification {
        let combined = try ConfigFragment.combine(target.fragments)
        return ConfigVerification.verify(
            recipe: recipe, target: target.target, configPath: configPath,
            requests: combined.requests, resolved: KernelConfig(parsing: text), kconfig: nil, warnings: combined.warnings
        )
    }

    /// Resolves afresh: writes `<buildDirectory>/.config` and a copy at `outputConfig`, and
    /// returns the verification, passed or not (`requirePassed()` turns a miss into an error).
    /// Filing the result is `ResolvedConfigCache.resolve`'s business.
    public func configure(
        recipe: Recipe, target: TargetRecipe, tree: SourceTree,
        buildDirectory: String, outputConfig: String, logFile: String
    ) async throws -> ConfigVerification {
        let combined = try ConfigFragment.combine(target.fragments)
        for warning in combined.warnings { console.warning(warning) }

        try FileStore.createDirectory(buildDirectory)
        try? FileManager.default.removeItem(atPath: logFile)
        let make = KernelMake(target: target.target, sourceTree: tree.path, buildDirectory: buildDirectory)
        let configPath = buildDirectory + "/.config"
        let label = "\(recipe.name)/\(target.target)"

        if case .file(let path) = recipe.baseConfig {
            try FileStore.copyAtomically(path, to: configPath)
        }
        console.info("config \(label): [1/3] \(Self.baseGoals(recipe.baseConfig).joined(separator: " "))")
        try await runner.runChecked(make.command(Self.baseGoals(recipe.baseConfig)), output: .logFile(logFile), what: "make \(recipe.baseConfig) for \(target.target)")

        console.info("config \(label): [2/3] merging \(combined.requests.count) settings from \(target.fragments.count) fragment files")
        let base = try KernelConfig.load(configPath)
        try FileStore.writeAtomically(base.merging(combined.requests).text, to: configPath)
        console.info("config \(label): [3/3] olddefconfig")
        try await runner.runChecked(make.command(["olddefconfig"]), output: .logFile(logFile), what: "make olddefconfig for \(target.target)")

        let resolvedText = try FileStore.readText(configPath)
        try FileStore.writeAtomically(resolvedText, to: outputConfig)
        let resolved = KernelConfig(parsing: resolvedText)
        var verification = ConfigVerification.verify(
            recipe: recipe.name, target: target.target, configPath: outputConfig,
            requests: combined.requests, resolved: resolved, kconfig: nil, warnings: combined.warnings
        )
        if !verification.passed {
            // Reading every Kconfig file takes a moment; only do it to explain a miss.
            let kconfig = try Kconfig.load(sourceTree: tree.path, target: target.target)
            verification = ConfigVerification.verify(
                recipe: recipe.name, target: target.target, configPath: outputConfig,
                requests: combined.requests, resolved: resolved, kconfig: kconfig, warnings: combined.warnings
            )
        }
        return verification
    }
}
