import Foundation
import VMFactoryArchive
import VMFactoryCore

/// Everything one target's init and initrd depend on, resolved before anything runs.
public struct InitrdPlan: Sendable {
    public let recipe: Recipe
    public let target: Target
    /// `<prefix>gcc --version`, first line.
    public let compiler: String
    public let initInputs: [BuildManifest.Input]
    /// sha256 of each recipe file, in the recipe's order.
    public let fileDigests: [SHA256Digest]
    public let sourceDateEpoch: Int
    /// Covers every input of the init and the initrd; see `computeKey`.
    public private(set) var key = SHA256Digest.of("")

    public init(recipe: Recipe, target: Target, compiler: String, initInputs: [BuildManifest.Input], fileDigests: [SHA256Digest], sourceDateEpoch: Int) {
        self.recipe = recipe
        self.target = target
        self.compiler = compiler
        self.initInputs = initInputs
        self.fileDigests = fileDigests
        self.sourceDateEpoch = sourceDateEpoch
        key = computeKey()
    }

    public var spec: InitrdSpec { recipe.initrd }
    public var fileName: String { "initrd.cpio" + spec.compression.suffix }

    /// Covers the init's sources, compiler and flags, the run protocol's version, the target, the time stamp, init's
    /// settings, the compression and every file's destination, mode and bytes.
    private func computeKey() -> SHA256Digest {
        var builder = KeyBuilder("vmfactory initrd v1")
        builder.add("target", target.rawValue)
        for input in initInputs { builder.add("init-source", "\(input.name) \(input.sha256.hex)") }
        builder.add("compiler", compiler)
        // The manifest records it: an init of a new version is another initrd.
        builder.add("run-protocol", String(InitCompiler.runProtocol))
        for flag in InitCompiler.flags { builder.add("flag", flag) }
        builder.add("mtime", String(sourceDateEpoch))
        builder.add("compression", spec.compression.rawValue)
        builder.add("init.conf", InitrdLayout.initConfig(spec))
        for (file, digest) in zip(spec.files, fileDigests) {
            builder.add("file", "\(file.destination) \(String(file.mode, radix: 8)) \(digest.hex)")
        }
        return builder.digest
    }
}

/// Compiles the init and writes the initrd for one target.
public struct InitrdBuilder: Sendable {
    public var library: Library
    public var runner: any ProcessRunner
    public var console: Console

    /// `compiler` is the first line of the target compiler's `--version` (the kernel
    /// toolchain's `compiler`).
    public func plan(_ recipe: Recipe, target: Target, compiler: String, sourceDateEpoch: Int) throws -> InitrdPlan {
        let shown = ManifestPaths(recipe: recipe).shown
        let inputs = try InitCompiler(library: library, runner: runner).inputs().map {
            BuildManifest.Input(name: $0.name, path: shown($0.path), sha256: $0.sha256)
        }
        let digests = try recipe.initrd.files.map { try SHA256Digest.ofFile(at: $0.source) }
        return InitrdPlan(
            recipe: recipe, target: target, compiler: compiler, initInputs: inputs, fileDigests: digests,
            sourceDateEpoch: sourceDateEpoch
        )
    }

    /// The kernel must be able to unpack what the recipe asks for.
    public static func checkDecompressor(_ compression: InitrdSpec.Compression, config: KernelConfig, configPath: String, target: Target) throws {
        guard config["BLK_DEV_INITRD"] == .yes else {
            throw VMFactoryError(
                .configNotVerified, "\(target): the kernel has no initrd support (CONFIG_BLK_DEV_INITRD is not set in \(FileStore.displayPath(configPath)))",
                hint: "add the initrd fragment to the recipe"
            )
        }
        guard let symbol = compression.kernelSymbol, config[symbol] != .yes else { return }
        throw VMFactoryError(
            .configNotVerified,
            "\(target): the initrd is \(compression.rawValue)-compressed but CONFIG_\(symbol) is not set in \(FileStore.displayPath(configPath)), so the kernel could not unpack it",
            hint: "add CONFIG_\(symbol)=y to a fragment of the recipe (kernel-configs/common/initrd.conf has it), or choose another initrd compression"
        )
    }

    /// Compiles `init` and writes the initrd into `workDirectory`.
    public func build(_ plan: InitrdPlan, resolvedConfig: String, workDirectory: String) async throws -> (part: BuildManifest.InitrdPart, outcome: PartOutcome) {
        let config = try KernelConfig.load(resolvedConfig)
        try Self.checkDecompressor(plan.spec.compression, config: config, configPath: resolvedConfig, target: plan.target)

        let label = "\(plan.recipe.name)/\(plan.target)"
        let initPath = workDirectory + "/init"
        console.info("initrd \(label): compiling init with \(plan.target.compiler())")
        try await InitCompiler(library: library, runner: runner).compile(target: plan.target, output: initPath)
        let binary = try FileStore.readData(initPath)
        let entries = try InitrdLayout.entries(init: binary, spec: plan.spec, mtime: Int64(plan.sourceDateEpoch))
        let initrdPath = workDirectory + "/" + plan.fileName
        try await BlockingWork.run("writing \(plan.fileName)") { _ in
            try ArchiveWriter.write(entries, to: initrdPath, format: .cpioNewc, compression: plan.spec.compression.archiveCompression)
        }
        let initrdSize = FileStore.fileSize(initrdPath) ?? 0
        console.info("initrd \(label): \(plan.fileName) with \(entries.count) entries, \(ByteCount.format(initrdSize)); init \(ByteCount.format(Int64(binary.count)))")

        let artifacts = [
            BuildManifest.Artifact(part: .initrd, name: "init", size: Int64(binary.count), sha256: .of(binary)),
            BuildManifest.Artifact(part: .initrd, name: plan.fileName, size: initrdSize, sha256: try await SHA256Digest.ofFile(at: initrdPath)),
        ]
        let part = BuildManifest.InitrdPart(
            compression: plan.spec.compression, hostname: plan.spec.hostname, entrypoint: plan.spec.entrypoint,
            environment: plan.spec.environment.map { "\($0.0)=\($0.1)" },
            initSources: plan.initInputs, compiler: plan.compiler, flags: InitCompiler.flags,
            files: zip(plan.spec.files, plan.fileDigests).map { .init(name: $0.0.destination, path: ManifestPaths(recipe: plan.recipe).shown($0.0.source), sha256: $0.1) },
            entries: entries.count, key: plan.key, runProtocol: InitCompiler.runProtocol
        )
        return (part, PartOutcome(artifacts: artifacts, files: [("init", initPath), (plan.fileName, initrdPath)]))
    }
}

extension InitrdSpec.Compression {
    var archiveCompression: ArchiveWriter.Compression {
        switch self {
        case .none: return .none
        case .gzip: return .gzip
        case .zstd: return .zstd
        case .lz4: return .lz4
        }
    }
}
