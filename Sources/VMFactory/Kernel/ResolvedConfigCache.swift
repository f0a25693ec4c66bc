import Foundation

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
        recipe: Recipe, target: TargetRecipe, treeKey: SHA256Digest, toolchain: Toolchain, hostMachine: String = Target.hostMachine
    ) -> SHA256Digest {
        var builder = KeyBuilder("vmfactory resolved config v1")
        builder.add("target", target.target.rawValue)
        builder.add("source-tree", treeKey.hex)
        builder.add("base-config", recipe.baseConfig.keyDescription)
        for fragment in target.fragments {
            let digest = (try? SHA256Digest.ofFile(at: fragment.path))?.hex ?? "unreadable"
            builder.add("fragment", "\(fragment.name) \(digest)")
        }
        builder.add("compiler", toolchain.compiler)
        builder.add("linker", toolchain.linker)
        builder.add("host-compiler", toolchain.hostCompiler)
        builder.add("make", toolchain.make)
        let make = KernelMake(target: target.target, sourceTree: "", buildDirectory: "", hostMachine: hostMachine)
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
        try FileManager.default.copyItem(atPath: config, toPath: staging + "/config")
        try FileManager.default.copyItem(atPath: log, toPath: staging + "/config.log")
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
}
