import Foundation
import VMFactoryBoot
import VMFactoryCore
import VMFactoryExec
import VMFactoryImage
import VMFactoryKernel
import VMFactoryPublish
import VMFactoryRun

/// What `vmfactory run` gives VMFactoryRun's preparer: images from the content store and the
/// rootfs cache, kernels from a recipe's build or a published kernel image, the accelerator
/// from the probe (`ProbedAccelerators`, VMFactoryRun's).

/// The image's cached disk, converted on first use. Without a platform the host's is asked
/// for, and an image made for one other platform is taken as it is.
struct ConvertedImages: RunImageProvider {
    let context: CommandContext
    let console: Console
    let cacheDirectory: String
    let registry: RegistryOptions

    func image(_ reference: String, platform: Platform?) async throws -> RunImage {
        let parsed = try ImageReference(parsing: reference, currentDirectory: context.currentDirectory)
        var source = ImageSource(
            store: ContentStore(cacheDirectory: cacheDirectory), runner: context.runner, console: console,
            environment: context.environment, temporaryDirectory: cacheDirectory + "/tmp"
        )
        source.registry = registry
        let converter = RootfsConverter(source: source, cache: RootfsCache(cacheDirectory: cacheDirectory), runner: context.runner, console: console)
        let options = DiskOptions(size: try DiskOptions.parseSize("+256M"), format: .qcow2, compression: .zstd)
        let converted: RootfsConverter.Result
        do {
            converted = try await converter.convert(parsed, platform: platform ?? .host, options: options, output: nil)
        } catch let error as VMFactoryError {
            guard platform == nil, let offered = ResolvedImage.offeredPlatform(in: error) else { throw error }
            converted = try await converter.convert(parsed, platform: offered, options: options, output: nil)
        }
        return RunImage(disk: converted.disk, config: converted.record.config, platform: converted.record.platform)
    }
}

/// The recipe's kernel, initrd and command line, built first when missing; with a kernel
/// image, those pulled (and verified) from it.
struct RecipeKernels: RunKernelProvider {
    let factory: Factory
    let recipe: Recipe
    /// `--kernel-image`.
    let kernelImage: String?
    let skopeo: Skopeo

    func kernel(for target: Target) async throws -> RunKernel {
        let booter = Booter(factory)
        let found: (kernel: String, initrd: String?, manifest: BuildManifest?)
        if let kernelImage {
            var options = BootOptions()
            options.imagesDirectory = try await PulledKernels.directory(kernelImage, target: target, factory: factory, skopeo: skopeo)
            found = try booter.images(recipe, target: target, options: options)
        } else if let built = try? booter.images(recipe, target: target, options: BootOptions()) {
            found = built
        } else {
            factory.console.info("run: no \(recipe.name) kernel for \(target) in \(FileStore.displayPath(factory.workspace.outputDirectory(recipe: recipe.name, target: target))) yet; building it (once)")
            _ = try await factory.build(recipe, targets: [target], options: BuildOptions())
            found = try booter.images(recipe, target: target, options: BootOptions())
        }
        let cmdline = try found.manifest?.kernel?.cmdline ?? recipe.requireTarget(target).cmdline
        guard let initrd = found.initrd else {
            throw VMFactoryError(.notFound, "no initrd for \(recipe.name)/\(target)", hint: "run `vmfactory build --recipe \(recipe.name) --target \(target)`")
        }
        return RunKernel(
            kernel: found.kernel, initrd: initrd, cmdline: cmdline, runProtocol: found.manifest?.initrd?.runProtocol,
            rebuildHint: kernelImage == nil
                ? "rebuild it with this vmfactory: vmfactory build --recipe \(recipe.name) --target \(target)"
                : "publish the kernel again with this vmfactory, or run it with the vmfactory that published it"
        )
    }
}
