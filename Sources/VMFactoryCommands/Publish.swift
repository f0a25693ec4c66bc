import ArgumentParser
import Foundation
import VMFactoryCore
import VMFactoryExec
import VMFactoryImage
import VMFactoryKernel
import VMFactoryPublish

/// `--creds`, `--tls-verify` and `--registry-timeout`: how skopeo reaches a registry.
struct RegistryArguments: ParsableArguments {
    @Option(help: "USER:PASSWORD for a docker:// registry (else skopeo's auth file, REGISTRY_AUTH_FILE).")
    var creds: String?

    @Option(name: .customLong("tls-verify"), help: "false for a registry without TLS or with a certificate not to check.")
    var tlsVerify: Bool = true

    @Option(help: "How long a registry may take to answer each skopeo call (60s, 2m).")
    var registryTimeout: DurationArgument?

    var options: RegistryOptions {
        var registry = RegistryOptions()
        registry.credentials = creds
        registry.tlsVerify = tlsVerify
        if let registryTimeout { registry.timeout = registryTimeout.duration }
        return registry
    }

    func skopeo(_ context: CommandContext) -> Skopeo {
        Skopeo(registry: options, environment: context.environment, runner: context.runner)
    }
}

struct Publish: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Publish a recipe's build as a multi-arch OCI image (or plain files) that other runtimes consume.",
        discussion: """
            DEST is one of:
              oci:DIR[:TAG]              an OCI image layout (other tags in it are kept)
              oci-archive:FILE[:TAG]     the same as a tar file
              docker://HOST/REPO:TAG     a registry, by skopeo copy --all (--creds, REGISTRY_AUTH_FILE, skopeo login)
              dir:DIR                    plain files: DIR/<target>/vmlinux, bzImage, initrd.cpio…, config, System.map, \
            manifest.json and a SHA256SUMS for sha256sum -c

            The image is an OCI index with one image manifest per target (linux/amd64, linux/s390x), each with one \
            layer holding /boot/… owned 0:0 with mtimes at the recipe's source-date-epoch. Publishing the same build \
            again, here or on another machine, gives the same index digest. A tag that names another image is \
            replaced only with --force.
            """
    )

    @OptionGroup var global: GlobalOptions

    @OptionGroup var selection: RecipeTargets

    @Option(help: "Where to publish (see above).")
    var to: String

    @Option(help: "Another tag to publish under (repeatable; default latest when DEST names none).")
    var tag: [String] = []

    @Flag(help: "Replace a tag (or a dir: folder) that names another image; the old digest is printed.")
    var force = false

    @OptionGroup var registry: RegistryArguments

    func validate() throws {
        for tag in tag where !PublishDestination.isValidTag(tag) { throw ValidationError("--tag \(tag): a tag is up to 128 of A-Z a-z 0-9 _ . - and starts with a letter, digit or _") }
    }

    func run() async throws {
        let to = self.to, tags = tag, force = self.force, registry = self.registry
        try await selection.run(global) { factory, recipe, targets in
            let context = CommandContext.current
            let destination = try PublishDestination(parsing: to, currentDirectory: context.currentDirectory)
            if case .folder = destination, !tags.isEmpty {
                throw VMFactoryError(.invalidArgument, "--tag goes with image destinations; dir: has no tags", hint: "drop --tag")
            }
            var built: [BuiltTarget] = []
            for target in targets {
                built.append(try await BuiltTarget.load(directory: factory.workspace.outputDirectory(recipe: recipe.name, target: target), recipe: recipe.name, target: target))
            }
            let provenance = await Provenance.of(checkout: factory.workspace.library.root, runner: factory.runner)
            let publisher = Publisher(skopeo: registry.skopeo(context), console: factory.console, temporaryDirectory: factory.workspace.cacheDirectory + "/tmp")
            let result = try await publisher.publish(built, provenance: provenance, to: destination, tags: tags, force: force)
            return Output(text: Self.describe(result), value: result)
        }
    }

    static func describe(_ result: Publisher.Result) -> String {
        var lines = ["published to \(result.destination)"]
        if let index = result.index { lines.append("index \(index)") }
        for target in result.targets {
            if let manifest = target.manifest {
                lines.append("  \(target.target) (\(target.platform)): manifest \(manifest)")
            } else {
                lines.append("  \(target.target): \(target.files.map(\.name).joined(separator: " "))")
            }
        }
        for tag in result.tags {
            let previous = tag.change == "replaced" ? ", was \(tag.previous ?? "?")" : ""
            lines.append("  tag \(tag.tag): \(tag.change)\(previous)")
        }
        return lines.joined(separator: "\n")
    }
}

struct Pull: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fetch a published kernel image, verify every digest down to each file, and write the files per architecture.",
        discussion: """
            REF is oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker://HOST/REPO:TAG (through skopeo). The files land as \
            `publish --to dir:` writes them: DIR/x86_64/vmlinux, bzImage, initrd.cpio…, config, System.map, \
            manifest.json, SHA256SUMS (and DIR/s390x/…). Anything that does not match its digest is refused with \
            the expected and the actual digest, and nothing is written under DIR's final names.
            """
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The published image (see above).")
    var reference: String

    @Option(help: "linux/amd64, linux/s390x or all (default: all the image has).")
    var platform: String = "all"

    @Option(help: "The folder that receives <target>/ folders.")
    var output: String

    @Flag(help: "Replace a target's folder in --output that holds other files.")
    var force = false

    @OptionGroup var registry: RegistryArguments

    func validate() throws {
        _ = try Self.targets(platform)
    }

    static func targets(_ platform: String) throws -> [Target]? {
        if platform == "all" { return nil }
        guard let parsed = Platform(parsing: platform), let target = parsed.target else {
            throw ValidationError("--platform wants linux/amd64, linux/s390x or all")
        }
        return [target]
    }

    func run() async throws {
        let reference = self.reference, platform = self.platform, output = self.output, force = self.force, registry = self.registry
        try await global.perform { context, console in
            let image = try ImageReference(parsing: reference, currentDirectory: context.currentDirectory)
            let cache = global.cacheDirectory(context)
            let puller = Puller(skopeo: registry.skopeo(context), console: console, temporaryDirectory: cache + "/tmp")
            let result = try await puller.pull(image, targets: try Self.targets(platform), output: FileStore.absolute(output, relativeTo: context.currentDirectory), force: force)
            var lines = ["pulled \(result.reference)", "index \(result.index)"]
            for target in result.targets {
                lines.append("  \(target.target) (\(target.platform)): \(FileStore.displayPath(target.directory)), \(target.files.map(\.name).joined(separator: " "))")
            }
            return Output(text: lines.joined(separator: "\n"), value: result)
        }
    }
}

extension PulledKernels {
    /// `--kernel-image REF` of boot and run: the folder of `target`'s pulled kernel and initrd.
    static func directory(_ text: String, target: Target, factory: Factory, skopeo: Skopeo) async throws -> String {
        let reference = try ImageReference(parsing: text, currentDirectory: factory.workspace.currentDirectory)
        let cache = factory.workspace.cacheDirectory
        let puller = Puller(skopeo: skopeo, console: factory.console, temporaryDirectory: cache + "/tmp")
        let folder = try await PulledKernels(puller: puller, cacheDirectory: cache).directory(for: reference, target: target)
        factory.console.debug("kernel image \(text): \(folder)")
        return folder
    }
}
