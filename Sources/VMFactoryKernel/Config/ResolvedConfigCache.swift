import Foundation
import VMFactoryArchive
import VMFactoryCore

/// Resolved and verified configs, filed under a key of everything that decides them.
///
/// Resolving runs kbuild's config tool three times (`tinyconfig` is two of them); a build
/// that finds the config of its inputs here copies it into the build directory and lets its
/// make go straight to compiling, which is what `vmfactory config` followed by `vmfactory
/// build`, a build after `vmfactory clean`, or a second output folder get. Only configs that
/// passed verification are filed. Kconfig also asks the host a few things the key does not
/// name (whether pahole or a C library for the target is installed, for example): the build
/// compares the `.config` its make ended with against the one it started with, and drops an
/// entry that make had to change.
///
/// Layout: `<cache>/configs/<key>/config` and `config.log`, each entry made in a temporary
/// folder and renamed into place. `vmfactory clean --all` removes them.
public struct ResolvedConfigCache: Sendable {
    public struct Entry: Sendable {
        public var config: String
        public var log: String
    }

    public var directory: String

    public init(cacheDirectory: String) {
        directory = cacheDirectory + "/configs"
    }

    /// The base config, each fragment's bytes in order, the source tree (tarball and
    /// patches), the target's make variables and the toolchain that Kconfig asks for its
    /// version and features.
    public static func key(
        target: Target, treeKey: SHA256Digest, baseConfig: String, fragments: [(name: String, sha256: SHA256Digest)],
        toolchain: Toolchain, hostMachine: String
    ) -> SHA256Digest {
        var builder = KeyBuilder("vmfactory resolved config v1")
        builder.add("target", target.rawValue)
        builder.add("source-tree", treeKey.hex)
        builder.add("base-config", baseConfig)
        for fragment in fragments {
            builder.add("fragment", "\(fragment.name) \(fragment.sha256.hex)")
        }
        builder.add("compiler", toolchain.compiler)
        builder.add("linker", toolchain.linker)
        builder.add("host-compiler", toolchain.hostCompiler)
        builder.add("make", toolchain.make)
        let make = KernelMake(target: target, sourceTree: "", buildDirectory: "", hostMachine: hostMachine)
        for (name, value) in make.variables {
            builder.add("make-variable", "\(name)=\(value)")
        }
        return builder.digest
    }

    public func path(for key: SHA256Digest) -> String { directory + "/" + key.hex }

    public func entry(_ key: SHA256Digest) -> Entry? {
        let folder = path(for: key)
        let entry = Entry(config: folder + "/config", log: folder + "/config.log")
        guard FileStore.isRegularFile(entry.config), FileStore.isRegularFile(entry.log) else { return nil }
        return entry
    }

    /// Files a verified config and the log of its resolution. An entry already there is kept:
    /// equal keys resolve to equal configs.
    public func store(config: String, log: String, key: SHA256Digest) throws {
        let folder = path(for: key)
        guard entry(key) == nil else { return }
        try FileStore.createDirectory(directory)
        let staging = FileStore.temporaryName(for: folder)
        defer { try? FileStore.removeTree(staging) }
        try FileStore.createDirectory(staging)
        try FileStore.copy(config, to: staging + "/config")
        try FileStore.copy(log, to: staging + "/config.log")
        // A folder without both files is what a hand or a full disk left: replace it.
        try? FileStore.removeTree(folder)
        do {
            try FileStore.rename(staging, to: folder)
        } catch {
            // Another vmfactory filed the same key meanwhile.
            if entry(key) == nil { throw error }
        }
    }

    public func remove(_ key: SHA256Digest) {
        try? FileStore.removeTree(path(for: key))
    }

    /// The config of `plan` in its build directory, with a copy at `outputConfig` and its log
    /// at `logFile`. Unless `fresh`, a filed config of the same key that still holds every
    /// request is taken without running make; one that does not is dropped. A config resolved
    /// here is filed when it verifies.
    public func resolve(
        _ plan: KernelBuildPlan, tree: SourceTree, outputConfig: String, logFile: String, fresh: Bool, configurator: KernelConfigurator
    ) async throws -> ConfigVerification {
        if !fresh, let entry = entry(plan.configKey),
           let verification = try reuse(entry, plan: plan, outputConfig: outputConfig, logFile: logFile, console: configurator.console) {
            return verification
        }
        let verification = try await configurator.configure(
            recipe: plan.recipe, target: plan.target, tree: tree, buildDirectory: plan.buildDirectory, outputConfig: outputConfig, logFile: logFile
        )
        if verification.passed {
            do {
                try store(config: outputConfig, log: logFile, key: plan.configKey)
            } catch {
                configurator.console.warning("could not keep the resolved config for later builds: \(VMFactoryError(error).message)")
            }
        }
        return verification
    }

    /// Puts a filed config in place, or returns nil (and drops the entry) when it no longer
    /// holds every request.
    private func reuse(_ entry: Entry, plan: KernelBuildPlan, outputConfig: String, logFile: String, console: Console) throws -> ConfigVerification? {
        let key = plan.configKey
        let text = try FileStore.readText(entry.config)
        let verification = try KernelConfigurator.check(text, shownAs: outputConfig, recipe: plan.recipe.name, target: plan.target)
        guard verification.passed else {
            console.warning("the config filed at \(FileStore.displayPath(path(for: key))) misses \(verification.misses.count) requested settings; resolving again")
            remove(key)
            return nil
        }
        for warning in verification.warnings { console.warning(warning) }
        let configPath = plan.buildDirectory + "/.config"
        try FileStore.createDirectory(plan.buildDirectory)
        // An unchanged .config keeps its time stamp, so make does not even run syncconfig.
        if (try? FileStore.readText(configPath)) != text {
            try FileStore.writeAtomically(text, to: configPath)
        }
        try FileStore.writeAtomically(text, to: outputConfig)
        let log = (try? FileStore.readText(entry.log)) ?? ""
        try FileStore.writeAtomically(log + "\n# vmfactory: resolved earlier from the same inputs; taken from \(path(for: key))\n", to: logFile)
        console.info("config \(plan.recipe.name)/\(plan.target.target): reusing the config resolved earlier from the same inputs (\(key.short))")
        return verification
    }

    /// make's syncconfig rewrote the config that `plan` started from (Kconfig sees this host
    /// differently from the one that filed it): the filed entry goes, and the config make
    /// used is checked against the fragments.
    public func makeRewrote(_ plan: KernelBuildPlan, usedConfig: String, shownAs: String, console: Console) throws -> ConfigVerification {
        console.warning("\(plan.recipe.name)/\(plan.target.target): make changed the resolved config (Kconfig sees this host differently from when it was resolved); recording the config make used and dropping the filed one")
        remove(plan.configKey)
        let text = try FileStore.readText(usedConfig)
        try FileStore.writeAtomically(text, to: shownAs)
        return try KernelConfigurator.check(text, shownAs: shownAs, recipe: plan.recipe.name, target: plan.target)
    }
}
