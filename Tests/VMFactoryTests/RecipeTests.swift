import Foundation
import Testing
@testable import VMFactoryCore
@testable import VMFactoryKernel

@Suite("Recipes", .tags(.unit), .scoped)
struct RecipeTests {
    let loader = TestSupport.recipes

    @Test("the minimal recipe decodes with every fragment and patch resolved")
    func minimalRecipe() throws {
        let recipe = try loader.load("minimal")
        #expect(recipe.name == "minimal")
        #expect(recipe.kernelVersion == "6.1.192")
        #expect(recipe.source.sha256 == TestSupport.pinnedSHA256)
        #expect(recipe.source.apt == AptSource(package: "linux-source-6.1", version: "6.1.192-2", member: "usr/src/linux-source-6.1.tar.xz"))
        #expect(recipe.baseConfig == .tinyconfig)
        #expect(recipe.targets.map(\.target) == [.x86_64, .s390x])
        #expect(recipe.digest == (try SHA256Digest.ofFile(at: TestSupport.repositoryRoot + "/recipes/minimal.yaml")))

        let x86 = try #require(recipe.target(.x86_64))
        #expect(x86.cmdline == "quiet panic=-1 console=ttyS0 reboot=t")
        let x86Files = x86.fragments.map { $0.path.replacingOccurrences(of: TestSupport.repositoryRoot + "/", with: "") }
        // A common file and a per-arch file of the same name combine, common first.
        #expect(x86Files.contains("kernel-configs/common/console.conf"))
        #expect(x86Files.contains("kernel-configs/x86_64/console.conf"))
        #expect(x86Files.contains("kernel-configs/common/fast-boot.conf") && x86Files.contains("kernel-configs/x86_64/fast-boot.conf"))
        #expect(try #require(x86Files.firstIndex(of: "kernel-configs/common/console.conf")) < (try #require(x86Files.firstIndex(of: "kernel-configs/x86_64/console.conf"))))
        #expect(x86Files.contains("kernel-configs/x86_64/pvh.conf"))
        #expect(!x86Files.contains { $0.hasPrefix("kernel-configs/s390x/") })

        let s390 = try #require(recipe.target(.s390x))
        #expect(s390.fragments.contains { $0.path.hasSuffix("s390x/uncompressed.conf") })
        #expect(!s390.fragments.contains { $0.path.contains("/x86_64/") })

        let series = try #require(recipe.patchSeries)
        #expect(series.patches.map(\.name) == [
            "0001-exit-restart-instead-of-panicking-when-init-exits.patch",
            "0002-reboot-log-restart-halt-and-power-off-at-notice-level.patch",
            "0003-x86-apic-calibrate-the-local-APIC-timer-against-the-TSC-in-a-millisecond.patch",
            "0004-x86-io_apic-skip-the-timer-check-under-any-hypervisor.patch",
            "0005-x86-mm-free-the-kernel-image-s-alignment-gaps-without-poisoning-them.patch",
        ])
    }

    @Test("a recipe given by path resolves its own fragments and patches relative to itself")
    func recipeOutsideTheRepository() throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write("CONFIG_EXT4_FS=y\n", to: dir + "/my-configs/common/ext4.conf")
        try TestSupport.write("0001-a.patch\n", to: dir + "/my-patches/mine/series")
        try TestSupport.write("--- a/x\n+++ b/x\n", to: dir + "/my-patches/mine/0001-a.patch")
        try TestSupport.write("""
            description: mine
            kernel:
              version: "6.1"
              source: {sha256: \(TestSupport.pinnedSHA256)}
              config:
                base: {file: my.config}
                fragment-dirs: [my-configs]
                fragments: [ext4, base]
              patches: {series: mine, dirs: [my-patches]}
            targets:
              s390x:
            """, to: dir + "/recipes/mine.yaml")
        try TestSupport.write("CONFIG_64BIT=y\n", to: dir + "/recipes/my.config")
        // Paths inside the recipe are relative to the recipe file, not the current directory.
        try FileManager.default.moveItem(atPath: dir + "/my-configs", toPath: dir + "/recipes/my-configs")
        try FileManager.default.moveItem(atPath: dir + "/my-patches", toPath: dir + "/recipes/my-patches")

        let recipe = try loader.load(dir + "/recipes/mine.yaml")
        #expect(recipe.name == "mine")
        #expect(recipe.baseConfig == .file(dir + "/recipes/my.config"))
        let s390 = try #require(recipe.target(.s390x))
        #expect(s390.fragments.first?.path == dir + "/recipes/my-configs/common/ext4.conf")
        // Names not in the recipe's folders come from vmfactory's own kernel-configs/.
        #expect(s390.fragments.contains { $0.path == TestSupport.repositoryRoot + "/kernel-configs/common/base.conf" })
        #expect(recipe.patchSeries?.directory == dir + "/recipes/my-patches/mine")
    }

    static let good = """
        description: test recipe
        kernel:
          version: 6.1.192
          source:
            sha256: 4d415b3d364834fd818270e88813e90323bbfce4f519a0e6bd4940ddcd7df693
          config:
            base: tinyconfig
            fragments: [base, console]
          patches:
            series: linux-6.1-microvm
        targets:
          x86_64:
            cmdline: console=ttyS0
        """

    struct BadRecipe: CustomTestStringConvertible, Sendable {
        var name: String
        var yaml: String
        /// Substrings the error message must contain, position first.
        var expected: [String]
        var testDescription: String { name }
    }

    static let badRecipes: [BadRecipe] = [
        BadRecipe(
            name: "missing field",
            yaml: good.replacingOccurrences(of: "  version: 6.1.192\n", with: ""),
            expected: ["recipe.yaml:3:3: ", "missing required key 'version' in kernel"]
        ),
        BadRecipe(
            name: "wrong type",
            yaml: good.replacingOccurrences(of: "fragments: [base, console]", with: "fragments: base"),
            expected: ["recipe.yaml:8:16: ", "kernel.config.fragments: expected a list, found the scalar 'base'"]
        ),
        BadRecipe(
            name: "unknown target",
            yaml: good.replacingOccurrences(of: "  x86_64:", with: "  arm64:"),
            expected: ["recipe.yaml:12:3: ", "unknown target 'arm64' (known: x86_64, s390x)"]
        ),
        BadRecipe(
            name: "unknown fragment",
            yaml: good.replacingOccurrences(of: "[base, console]", with: "[base, virtiofs]"),
            expected: ["recipe.yaml:8:23: ", "kernel.config.fragments[1]: unknown fragment 'virtiofs'", "available fragments:", "virtio-fs"]
        ),
        BadRecipe(
            name: "unknown patch series",
            yaml: good.replacingOccurrences(of: "series: linux-6.1-microvm", with: "series: linux-9.9"),
            expected: ["recipe.yaml:10:13: ", "unknown patch series 'linux-9.9'", "known series: linux-6.1-microvm"]
        ),
        BadRecipe(
            name: "malformed sha256",
            yaml: good.replacingOccurrences(of: "ddcd7df693", with: "ddcd7df69"),
            expected: ["recipe.yaml:5:13: ", "malformed sha256", "this one has 63 characters"]
        ),
        BadRecipe(
            name: "sha256 with a non-hex digit",
            yaml: good.replacingOccurrences(of: "4d415b3d", with: "4d415b3z"),
            expected: ["recipe.yaml:5:13: ", "malformed sha256", "not hexadecimal digits"]
        ),
        BadRecipe(
            name: "YAML syntax error",
            yaml: good.replacingOccurrences(of: "[base, console]", with: "[base, console"),
            expected: ["recipe.yaml:9:10: ", "YAML syntax error: did not find expected ',' or ']'", "flow sequence at line 8, column 16"]
        ),
        BadRecipe(
            name: "unknown key",
            yaml: good.replacingOccurrences(of: "    fragments:", with: "    fragment:"),
            expected: ["recipe.yaml:8:5: ", "kernel.config.fragment: unknown key 'fragment' (expected one of: base, fragments, fragment-dirs)"]
        ),
        BadRecipe(
            name: "duplicate key",
            yaml: good + "\n  x86_64:\n    cmdline: again\n",
            expected: ["recipe.yaml:12:3: ", "key 'x86_64' appears more than once in this mapping"]
        ),
        BadRecipe(
            name: "unknown base config",
            yaml: good.replacingOccurrences(of: "base: tinyconfig", with: "base: smallconfig"),
            expected: ["recipe.yaml:7:11: ", "unknown base config 'smallconfig'"]
        ),
        BadRecipe(
            name: "unknown URL scheme",
            yaml: good.replacingOccurrences(of: "    sha256:", with: "    urls: [ftp://example.org/linux.tar.xz]\n    sha256:"),
            expected: ["recipe.yaml:5:12: ", "kernel.source.urls[0]: 'ftp://example.org/linux.tar.xz' is not an http, https or file URL"]
        ),
        BadRecipe(
            name: "no targets",
            yaml: good.components(separatedBy: "targets:")[0] + "targets: {}\n",
            expected: ["recipe.yaml:11:10: ", "targets: must name at least one target"]
        ),
        BadRecipe(name: "empty file", yaml: "# nothing here\n", expected: ["recipe.yaml: the recipe is empty"]),
        BadRecipe(
            name: "unknown initrd compression",
            yaml: good + "\ninitrd:\n  compression: bzip2\n",
            expected: ["recipe.yaml:15:16: ", "initrd.compression: unknown compression 'bzip2' (known: none, gzip, zstd, lz4)"]
        ),
        BadRecipe(
            name: "initrd file with a relative destination",
            yaml: good + "\ninitrd:\n  files:\n    - {source: recipe.yaml, destination: bin/app}\n",
            expected: ["recipe.yaml:16:42: ", "initrd.files[0].destination: 'bin/app' must be an absolute path"]
        ),
        BadRecipe(
            name: "initrd file over /init",
            yaml: good + "\ninitrd:\n  files:\n    - {source: recipe.yaml, destination: /init}\n",
            expected: ["initrd.files[0].destination: /init is made by vmfactory"]
        ),
        BadRecipe(
            name: "initrd file that does not exist",
            yaml: good + "\ninitrd:\n  files:\n    - {source: missing.bin, destination: /bin/app}\n",
            expected: ["recipe.yaml:16:16: ", "initrd.files[0].source: no such file:", "missing.bin"]
        ),
        BadRecipe(
            name: "initrd file mode that is not octal",
            yaml: good + "\ninitrd:\n  files:\n    - {source: recipe.yaml, destination: /bin/app, mode: \"0789\"}\n",
            expected: ["initrd.files[0].mode: '0789' is not an octal file mode"]
        ),
        BadRecipe(
            name: "initrd environment name",
            yaml: good + "\ninitrd:\n  env:\n    1BAD: x\n",
            expected: ["recipe.yaml:16:5: ", "initrd.env.1BAD: '1BAD' is not an environment variable name"]
        ),
        BadRecipe(
            name: "negative source-date-epoch",
            yaml: "source-date-epoch: -5\n" + good,
            expected: ["recipe.yaml:1:20: ", "source-date-epoch: must be seconds since 1970-01-01 UTC"]
        ),
    ]

    @Test("the initrd section decodes with its files relative to the recipe, and has defaults")
    func initrdSection() throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write("#!/bin/sh\n", to: dir + "/recipes/files/app")
        try TestSupport.write(Self.good + """

            source-date-epoch: 1700000000
            initrd:
              compression: zstd
              hostname: sandbox-1
              entrypoint: [/bin/app, --serve, "two words"]
              env:
                GREETING: hello world
                MODE: "1"
              files:
                - source: files/app
                  destination: /bin/app
                  mode: "0755"
                - {source: files/app, destination: /opt/tools/app-copy, mode: 600}
            """, to: dir + "/recipes/mine.yaml")
        let recipe = try loader.load(dir + "/recipes/mine.yaml")
        #expect(recipe.sourceDateEpoch == 1_700_000_000)
        #expect(recipe.initrd.compression == .zstd)
        #expect(recipe.initrd.hostname == "sandbox-1")
        #expect(recipe.initrd.entrypoint == ["/bin/app", "--serve", "two words"])
        #expect(recipe.initrd.environment.map { "\($0.0)=\($0.1)" } == ["GREETING=hello world", "MODE=1"])
        #expect(recipe.initrd.files == [
            InitrdSpec.File(source: dir + "/recipes/files/app", destination: "/bin/app", mode: 0o755),
            InitrdSpec.File(source: dir + "/recipes/files/app", destination: "/opt/tools/app-copy", mode: 0o600),
        ])

        let defaults = try loader.load("minimal").initrd
        #expect(defaults.compression == .none)
        #expect(defaults.entrypoint.isEmpty)
        #expect(defaults.hostname == "vmfactory")
    }

    @Test("bad recipes fail with the file, line, column and what is wrong", arguments: badRecipes)
    func badRecipe(_ bad: BadRecipe) throws {
        let dir = try TestSupport.temporaryDirectory()
        let path = dir + "/recipe.yaml"
        try TestSupport.write(bad.yaml, to: path)
        let error = try #require(throws: VMFactoryError.self) { try loader.load(path: path) }
        #expect(error.code == .invalidRecipe || error.code == .notFound)
        for fragment in bad.expected {
            #expect(error.message.contains(fragment) || (error.hint ?? "").contains(fragment), "\(fragment) not in: \(error.message) / \(error.hint ?? "")")
        }
        // The message starts with the file's path, so editors can jump to it.
        #expect(error.message.hasPrefix(path) || error.message.hasPrefix(FileStore.displayPath(path)))
    }

    @Test("a series naming a missing patch fails at the series file's line")
    func unknownPatchInSeries() throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write("# first the good one\n0001-ok.patch\n\n0002-missing.patch\n", to: dir + "/patches/mine/series")
        try TestSupport.write("--- a/x\n+++ b/x\n", to: dir + "/patches/mine/0001-ok.patch")
        let yaml = Self.good.replacingOccurrences(of: "    series: linux-6.1-microvm", with: "    series: mine\n    dirs: [patches]")
        try TestSupport.write(yaml, to: dir + "/recipe.yaml")
        let error = try #require(throws: VMFactoryError.self) { try loader.load(path: dir + "/recipe.yaml") }
        #expect(error.message.contains("patches/mine/series:4: unknown patch '0002-missing.patch'"))
    }

    @Test("unknown recipe names list the known ones")
    func unknownRecipeName() throws {
        let error = try #require(throws: VMFactoryError.self) { try loader.load("minimall") }
        #expect(error.message == "unknown recipe 'minimall'")
        #expect(error.hint?.contains("known recipes: container, minimal") == true)
    }

    @Test("every recipe in recipes/ is listed with its description")
    func listing() throws {
        let entries = loader.list()
        let minimal = try #require(entries.first { $0.name == "minimal" })
        #expect(try minimal.summary.get().hasPrefix("Minimal microVM kernel"))
    }
}
