import ArgumentParser
import Foundation
import VMFactoryCore
import VMFactoryExec
import VMFactoryImage

struct Rootfs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a container image into a bootable ext4 root disk (qcow2 or raw), without root rights.",
        discussion: """
            IMAGE is one of:
              oci:DIR[:TAG|:sha256:DIGEST]          an OCI image layout (umoci, skopeo copy … oci:DIR)
              oci-archive:FILE[:TAG]                the same as a tar file
              docker-archive:FILE[:NAME:TAG]        what docker save, podman save and skopeo write
              docker://HOST/REPO[:TAG|@sha256:…]    a registry, through skopeo (its auth files, --creds, --tls-verify)
              tar:FILE                              a root file system tarball (docker export, mmdebstrap), with --config

            The disk, its image.json (the image config, manifest digest, platform, disk sha256) and the image's \
            blobs are cached: converting the same image with the same options again is a cache hit, which reads \
            the disk only when its file changed since its bytes were last checked. The image is not changed: no \
            init is copied into it.
            """
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The image (see above).")
    var image: String

    @Option(help: "The image's platform in an index, such as linux/amd64 or linux/s390x (default: the --target's, else the host's).")
    var platform: String?

    @Option(help: "The guest architecture, x86_64 or s390x: chooses the platform linux/amd64 or linux/s390x.")
    var target: SingleTarget?

    @Option(help: "+SIZE: free space on top of the content (default +256M); SIZE: the whole disk (2G). Units K, M, G, T.")
    var size: String = "+256M"

    @Option(help: "The disk's format: qcow2 (sparse, the default) or raw.")
    var diskFormat: DiskFormatArgument = .qcow2

    @Option(help: "qcow2's cluster compression: zstd (the default; QEMU 5.1 and later), zlib (every qcow2 reader) or none.")
    var qcow2Compression: CompressionArgument?

    @Option(help: "Also place a copy of the disk at this path (written under a temporary name and renamed).")
    var output: String?

    @Option(help: "For tar:FILE, an image config (JSON, as in the OCI image spec) with Entrypoint, Cmd, Env and the rest.")
    var config: String?

    @OptionGroup var registry: RegistryArguments

    func validate() throws {
        if let platform, Platform(parsing: platform) == nil { throw ValidationError("--platform wants OS/ARCH[/VARIANT], such as linux/amd64") }
        if let platform, let target, let parsed = Platform(parsing: platform), !parsed.matches(Platform.of(target.target)) {
            throw ValidationError("--platform \(platform) is not the platform of --target \(target.rawValue) (\(Platform.of(target.target)))")
        }
        if config != nil, !image.hasPrefix("tar:") { throw ValidationError("--config goes with tar:FILE only; other images carry their config") }
        if qcow2Compression != nil, diskFormat == .raw { throw ValidationError("--qcow2-compression goes with qcow2 disks; raw disks are never compressed") }
    }

    func run() async throws {
        try await global.perform { context, console in
            let reference = try ImageReference(parsing: image, currentDirectory: context.currentDirectory)
            let wanted = platform.flatMap(Platform.init(parsing:)) ?? target.map { Platform.of($0.target) } ?? Platform.host
            let options = DiskOptions(size: try DiskOptions.parseSize(size), format: diskFormat.format, compression: qcow2Compression?.compression ?? .zstd)
            let cache = global.cacheDirectory(context)
            var source = ImageSource(
                store: ContentStore(cacheDirectory: cache), runner: context.runner, console: console,
                environment: context.environment, temporaryDirectory: cache + "/tmp"
            )
            source.registry = registry.options
            source.configFile = config.map { FileStore.absolute($0, relativeTo: context.currentDirectory) }
            let converter = RootfsConverter(source: source, cache: RootfsCache(cacheDirectory: cache), runner: context.runner, console: console)
            let result = try await converter.convert(
                reference, platform: wanted, options: options,
                output: output.map { FileStore.absolute($0, relativeTo: context.currentDirectory) }
            )
            return Output(text: Self.describe(result), value: result)
        }
    }

    static func describe(_ result: RootfsConverter.Result) -> String {
        let record = result.record
        var lines = [
            "disk: \(result.output ?? result.disk)",
            "  \(record.disk.format)\(record.disk.compression == "none" ? "" : " (\(record.disk.compression))"), \(ByteCount.format(record.disk.size)) on disk, \(ByteCount.format(record.disk.virtualSize)) file system, \(record.entries) entries, sha256 \(record.disk.sha256)",
        ]
        if result.output != nil { lines.append("  cached: \(result.disk)") }
        lines.append("image: \(record.references.last ?? "")")
        lines.append("  manifest \(record.manifestDigest), platform \(record.platform)")
        let config = record.config
        func words(_ list: [String]?) -> String { (list ?? []).map(Command.shellQuoted).joined(separator: " ") }
        if let entrypoint = config.Entrypoint, !entrypoint.isEmpty { lines.append("  entrypoint: \(words(entrypoint))") }
        if let cmd = config.Cmd, !cmd.isEmpty { lines.append("  cmd: \(words(cmd))") }
        if let user = config.User, !user.isEmpty { lines.append("  user: \(user)") }
        if let dir = config.WorkingDir, !dir.isEmpty { lines.append("  workdir: \(dir)") }
        for variable in config.Env ?? [] { lines.append("  env: \(variable)") }
        if let ports = config.ExposedPorts, !ports.isEmpty { lines.append("  ports: \(ports.keys.sorted().joined(separator: " "))") }
        if let volumes = config.Volumes, !volumes.isEmpty { lines.append("  volumes: \(volumes.keys.sorted().joined(separator: " "))") }
        if let signal = config.StopSignal { lines.append("  stop signal: \(signal)") }
        for (key, value) in (config.Labels ?? [:]).sorted(by: { $0.key < $1.key }) { lines.append("  label: \(key)=\(value)") }
        lines.append(result.cached ? "cache hit in \(String(format: "%.3f", result.seconds))s" : "converted in \(String(format: "%.2f", result.seconds))s")
        return lines.joined(separator: "\n")
    }
}

enum CompressionArgument: String, ExpressibleByArgument, CaseIterable {
    case zstd, zlib, none
    var compression: DiskOptions.Compression { DiskOptions.Compression(rawValue: rawValue)! }
}

enum DiskFormatArgument: String, ExpressibleByArgument, CaseIterable {
    case qcow2, raw
    var format: DiskOptions.Format { DiskOptions.Format(rawValue: rawValue)! }
}
