import ArgumentParser
import VMFactoryBoot
import VMFactoryCore
import VMFactoryExec
import VMFactoryKernel
import VMFactoryRun

struct Clean: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove build directories, with --images converted root disks and image blobs, with --templates the saved VMs runs start from, or with --all everything in the cache.",
        discussion: "Outputs are never touched. Directories that a running build holds are left alone with a warning."
    )

    @OptionGroup var global: GlobalOptions

    @Option(help: "Remove only this recipe's build directories.")
    var recipe: String?

    @Flag(help: "Remove the whole cache: build directories, source trees, filed configs, ccache and downloaded sources.")
    var all = false

    @Flag(help: "Remove the root disks `vmfactory rootfs` made, the image blobs they came from and the kernels pulled for --kernel-image (not the builds).")
    var images = false

    @Flag(help: "Remove the templates runs start from (`vmfactory templates`); the next run of each machine boots cold and makes its own again.")
    var templates = false

    func validate() throws {
        if templates && (all || recipe != nil || images) { throw ValidationError("--templates removes templates only; give it alone (--all removes them too)") }
        if all && recipe != nil { throw ValidationError("--all already removes every recipe's builds; give --recipe or --all, not both") }
        if images && (all || recipe != nil) { throw ValidationError("--images removes images only; give it alone (--all removes images too)") }
    }

    func run() async throws {
        let recipe = self.recipe.map(RecipeLoader.name(of:))
        let all = self.all
        let images = self.images
        let templates = self.templates
        try await global.perform { context, console in
            let cache = global.cacheDirectory(context)
            let report = templates
                ? try await CacheCleaner.remove([RunTemplates(cacheDirectory: cache).directory], console: console)
                : images
                ? try await CacheCleaner.cleanImages(cache, console: console)
                : try await CacheCleaner.clean(cache, recipe: recipe, all: all, console: console)
            let text = report.removed.isEmpty
                ? "nothing to remove in \(cache)"
                : report.removed.map { "removed \($0)" }.joined(separator: "\n") + "\nfreed \(ByteCount.format(report.bytes))"
            return Output(text: text, value: report)
        }
    }
}
