import Foundation
import VMFactoryCore

/// `vmfactory rootfs`: an image to a root disk, through the content store and the disk cache.
public struct RootfsConverter: Sendable {
    public var source: ImageSource
    public var cache: RootfsCache
    public var runner: any ProcessRunner
    public var console: Console

    public init(source: ImageSource, cache: RootfsCache, runner: any ProcessRunner, console: Console) {
        self.source = source
        self.cache = cache
        self.runner = runner
        self.console = console
    }

    public struct Result: Sendable, Codable {
        public var disk: String
        /// Where `--output` put a copy.
        public var output: String?
        /// Whether the disk came from the cache.
        public var cached: Bool
        public var record: RootfsRecord
        public var seconds: Double
    }

    public func convert(_ reference: ImageReference, platform: Platform, options: DiskOptions, output: String?) async throws -> Result {
        let started = ContinuousClock.now
        let image = try await source.resolve(reference, platform: platform)
        console.debug("rootfs: resolving \(reference) took \(String(format: "%.3f", (ContinuousClock.now - started).seconds))s")
        let qemuImgPath = options.format == .qcow2 ? try ChildProcess.resolveExecutable("qemu-img", path: source.environment["PATH"] ?? "/usr/bin:/bin") : nil
        let converter = RootfsCache.converterVersion(qemuImg: qemuImgPath)
        let key = RootfsCache.key(manifest: image.manifestDigest, platform: image.platform, options: options, converter: converter)
        let lock = try await cache.lock(key, console: console)
        defer { lock.release() }

        var cached = true
        var entry: RootfsCache.Entry
        if let found = try await cache.lookup(key, console: console) {
            entry = found
        } else {
            cached = false
            console.info("rootfs: \(reference): \(image.platform), manifest \(image.manifestDigest.short)…, \(image.layers.count) layers")
            let fetching = ContinuousClock.now
            try await source.fetchLayers(of: image, from: reference)
            console.debug("rootfs: the layers into the store took \(String(format: "%.3f", (ContinuousClock.now - fetching).seconds))s")
            let qemuImg = options.format == .qcow2 ? try await qemuImgVersion() : nil
            entry = try await cache.store(key) { folder in
                let disk = try await DiskBuilder(runner: runner, console: console).build(image, options: options, in: folder)
                return RootfsRecord(
                    references: [reference.description], manifestDigest: "sha256:" + image.manifestDigest.hex,
                    configDigest: "sha256:" + image.configDigest.hex, platform: image.platform.description,
                    config: image.config.config ?? ImageConfig.Execution(),
                    disk: .init(
                        file: disk.format.fileName, format: disk.format.rawValue, compression: options.compression.rawValue, sha256: disk.sha256,
                        size: FileStore.fileSize(disk.path) ?? 0, virtualSize: disk.virtualSize,
                        pieces: try await PieceDigests.of(file: disk.path)
                    ),
                    entries: disk.entries, size: options.size.description, converter: converter, qemuImg: qemuImg
                )
            }
        }
        try cache.touch(&entry, reference: reference.description)
        var placed: String?
        if let output {
            let disk = entry.diskPath
            try await BlockingWork.run("copying the disk to \(output)") { cancellation in
                // The user's copy, for a guest to write to.
                try FileStore.copyAtomically(disk, to: output, mode: 0o644, cancellation: cancellation)
            }
            placed = output
        }
        return Result(disk: entry.diskPath, output: placed, cached: cached, record: entry.record, seconds: (ContinuousClock.now - started).seconds)
    }

    /// `qemu-img --version`'s first line's version, part of the cache key of qcow2 disks.
    func qemuImgVersion() async throws -> String {
        let command = Command("qemu-img", ["--version"])
        let result = try await runner.runChecked(command, what: "qemu-img --version")
        let first = result.output.split(separator: "\n").first.map(String.init) ?? ""
        return first.split(separator: " ").dropFirst(2).first.map(String.init) ?? first
    }
}
