import Foundation
import VMFactoryArchive
import VMFactoryCore

/// Everything one target's kernel build depends on, resolved before anything runs: the make
/// invocation, the reproducibility settings, the artifacts to collect and the keys.
public struct KernelBuildPlan: Sendable {
    /// A file the build leaves in the build directory that is published.
    public struct ArtifactSpec: Sendable, Hashable {
        public var name: String
        /// Relative to the build directory.
        public var buildPath: String
        public var kind: KernelImage.Kind?
    }

    /// What the plan is made from.
    public struct Inputs: Sendable {
        public var recipe: Recipe
        public var target: TargetRecipe
        public var treeKey: SHA256Digest
        public var toolchain: Toolchain
        /// `KBUILD_BUILD_TIMESTAMP` is this instant.
        public var sourceDateEpoch: Int
        public var jobs: Int
        /// The ccache executable, when builds go through it. It is left out of the keys: a cache
        /// hit gives the same bytes as a compile.
        public var ccache: String?
        /// distcc or icecream, when compiles go to helpers. Left out of the keys like ccache.
        public var helpers: DistributedCompile?
        public var hostMachine: String
        public var buildDirectory: String
        public var outputDirectory: String

        public init(
            recipe: Recipe, target: TargetRecipe, treeKey: SHA256Digest, toolchain: Toolchain, sourceDateEpoch: Int,
            jobs: Int, ccache: String? = nil, helpers: DistributedCompile? = nil, hostMachine: String = Target.hostMachine, buildDirectory: String, outputDirectory: String
        ) {
            self.recipe = recipe
            self.target = target
            self.treeKey = treeKey
            self.toolchain = toolchain
            self.sourceDateEpoch = sourceDateEpoch
            self.jobs = jobs
            self.ccache = ccache
            self.helpers = helpers
            self.hostMachine = hostMachine
            self.buildDirectory = buildDirectory
            self.outputDirectory = outputDirectory
        }
    }

    public let inputs: Inputs
    /// Each fragment file with the sha256 of its bytes, in the order they apply.
    public let fragments: [(file: FragmentFile, sha256: SHA256Digest)]
    /// What decides the resolved config; see `ResolvedConfigCache`.
    public let configKey: SHA256Digest
    /// Covers every input known before configuring: what decides the config, the kernel
    /// version, the make variables that reach the images, the reproducibility settings and
    /// the goals. Equal keys mean the existing artifacts can be reused without running anything.
    public let inputKey: SHA256Digest

    /// Hashes the fragments and computes the keys, once.
    public init(_ inputs: Inputs) throws {
        self.inputs = inputs
        fragments = try inputs.target.fragments.map { ($0, try SHA256Digest.ofFile(at: $0.path)) }
        configKey = ResolvedConfigCache.key(
            target: inputs.target.target, treeKey: inputs.treeKey, baseConfig: try inputs.recipe.baseConfig.keyDescription(),
            fragments: fragments.map { ($0.file.name, $0.sha256) }, toolchain: inputs.toolchain, hostMachine: inputs.hostMachine
        )
        var builder = KeyBuilder("vmfactory kernel build inputs v2")
        builder.add("config-inputs", configKey.hex)
        builder.add("kernel-version", inputs.recipe.kernelVersion)
        let plain = KernelMake(target: inputs.target.target, sourceTree: "", buildDirectory: "", hostMachine: inputs.hostMachine)
        for (name, value) in plain.variables {
            builder.add("make-variable", "\(name)=\(value)")
        }
        for (name, value) in Self.reproducibilityVariables(epoch: inputs.sourceDateEpoch).sorted(by: { $0.key < $1.key }) {
            builder.add("environment", "\(name)=\(value)")
        }
        for goal in Self.goals(inputs.target.target) { builder.add("goal", goal) }
        inputKey = builder.digest
    }

    /// The same plan with some inputs changed, and its keys computed again.
    public func with(_ change: (inout Inputs) -> Void) throws -> KernelBuildPlan {
        var changed = inputs
        change(&changed)
        return try KernelBuildPlan(changed)
    }

    public var recipe: Recipe { inputs.recipe }
    public var target: TargetRecipe { inputs.target }
    public var treeKey: SHA256Digest { inputs.treeKey }
    public var toolchain: Toolchain { inputs.toolchain }
    public var sourceDateEpoch: Int { inputs.sourceDateEpoch }
    public var jobs: Int { inputs.jobs }
    public var ccache: String? { inputs.ccache }
    public var helpers: DistributedCompile? { inputs.helpers }
    public var hostMachine: String { inputs.hostMachine }
    public var buildDirectory: String { inputs.buildDirectory }
    public var outputDirectory: String { inputs.outputDirectory }

    /// The epoch of a build: the recipe's `source-date-epoch`, else `$SOURCE_DATE_EPOCH`, else 0.
    public static func sourceDateEpoch(recipe: Recipe, environment: [String: String]) throws -> Int {
        if let epoch = recipe.sourceDateEpoch { return epoch }
        guard let text = environment["SOURCE_DATE_EPOCH"], !text.isEmpty else { return 0 }
        guard let epoch = Int(text), epoch >= 0 else {
            throw VMFactoryError(.invalidArgument, "SOURCE_DATE_EPOCH=\(text) is not a number of seconds since 1970", hint: "set it to the output of `date -u +%s`, or unset it")
        }
        return epoch
    }

    /// The make goals that produce the images.
    public var goals: [String] { Self.goals(target.target) }

    static func goals(_ target: Target) -> [String] {
        switch target {
        case .x86_64: return ["vmlinux", "bzImage"]
        case .s390x: return ["bzImage"]
        }
    }

    /// Kernel images first, then the symbol map.
    public var artifacts: [ArtifactSpec] {
        switch target.target {
        case .x86_64:
            return [
                ArtifactSpec(name: "vmlinux", buildPath: "vmlinux", kind: .elfPVH),
                ArtifactSpec(name: "bzImage", buildPath: "arch/x86/boot/bzImage", kind: .x86BzImage),
                ArtifactSpec(name: "System.map", buildPath: "System.map", kind: nil),
            ]
        case .s390x:
            return [
                ArtifactSpec(name: "bzImage", buildPath: "arch/s390/boot/bzImage", kind: .s390Uncompressed),
                ArtifactSpec(name: "System.map", buildPath: "System.map", kind: nil),
            ]
        }
    }

    /// `Mon Jan  1 00:00:00 UTC 2024`: what `date` prints, which is what kbuild shows in
    /// `uname -v` and the boot banner.
    public var buildTimestamp: String { Self.buildTimestamp(epoch: sourceDateEpoch) }

    static func buildTimestamp(epoch: Int) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "EEE MMM d HH:mm:ss 'UTC' yyyy"
        let text = formatter.string(from: Date(timeIntervalSince1970: TimeInterval(epoch)))
        // date(1) pads the day of the month to two columns with a space.
        let parts = text.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 6, parts[2].count == 1 else { return text }
        return parts[0...1].joined(separator: " ") + "  " + parts[2...].joined(separator: " ")
    }

    /// The variables that make the images reproducible. Passed in the environment, where
    /// kbuild's scripts read them.
    public var reproducibilityVariables: [String: String] { Self.reproducibilityVariables(epoch: sourceDateEpoch) }

    static func reproducibilityVariables(epoch: Int) -> [String: String] {
        [
            "KBUILD_BUILD_TIMESTAMP": buildTimestamp(epoch: epoch),
            "KBUILD_BUILD_USER": "vmfactory",
            "KBUILD_BUILD_HOST": "vmfactory",
            "KBUILD_BUILD_VERSION": "1",
        ]
    }

    /// Variables on make's command line besides ARCH and CROSS_COMPILE.
    public var makeOverrides: [String: String] {
        guard let ccache else { return [:] }
        return ["CC": "\(ccache) \(target.target.compiler(host: hostMachine))"]
    }

    public func make(sourceTree: String) -> KernelMake {
        KernelMake(target: target.target, sourceTree: sourceTree, buildDirectory: buildDirectory, jobs: jobs, hostMachine: hostMachine, extraVariables: makeOverrides)
    }

    /// The variables every make of this build sets, on top of the runner's base environment.
    public func environment(cacheDirectory: String) -> [String: String] {
        var environment = reproducibilityVariables
        if ccache != nil {
            // No CCACHE_BASEDIR: ccache would hand the compiler the source files' paths made
            // relative, the kernel's -fmacro-prefix-map (which strips the absolute source tree)
            // would no longer match them, and __FILE__ would put "../../../trees/<key>/linux/…"
            // into the image: bytes that differ from a build without ccache. With the paths as
            // make gives them, a hit is the object a compile makes, and build directories that
            // share the source tree (its absolute path) share hits.
            environment["CCACHE_DIR"] = cacheDirectory + "/ccache"
            // Depend mode: a miss is one compile, whose -MMD output names the headers for the
            // next lookup. In ccache's default mode a miss also runs the preprocessor to hash its
            // output, and a tiny kernel's objects are mostly headers: a cold container build of
            // x86_64 took 825 s of CPU that way, 536 s in depend mode, 481 s without ccache.
            // Hits come from the direct lookup either way (the same absolute source paths).
            environment["CCACHE_DEPEND"] = "true"
        }
        if let helpers {
            environment.merge(helpers.environment(ccache: ccache != nil)) { _, new in new }
        }
        return environment
    }

    public func makeCommand(_ goals: [String], sourceTree: String, cacheDirectory: String) -> Command {
        var command = make(sourceTree: sourceTree).command(goals)
        command.environment = environment(cacheDirectory: cacheDirectory)
        return command
    }

    /// The input key together with the resolved `.config` that configuring produced.
    public func buildKey(resolvedConfig: SHA256Digest) -> SHA256Digest {
        var builder = KeyBuilder("vmfactory kernel build v1")
        builder.add("inputs", inputKey.hex)
        builder.add("resolved-config", resolvedConfig.hex)
        return builder.digest
    }
}

extension BaseConfig {
    /// A base config file counts by its bytes, not its path.
    func keyDescription() throws -> String {
        switch self {
        case .file(let path): return "file " + (try SHA256Digest.ofFile(at: path)).hex
        default: return description
        }
    }
}
