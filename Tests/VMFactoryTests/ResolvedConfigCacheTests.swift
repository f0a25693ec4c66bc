import Foundation
import Synchronization
import Testing
@testable import VMFactoryCore
@testable import VMFactoryKernel

/// Answers every command with a failure and remembers what was asked: the configurator must
/// not run make when it reuses a filed config.
private final class RecordingRefuser: ProcessRunner {
    private let asked = Mutex<[String]>([])
    var commands: [String] { asked.withLock { $0 } }

    func run(_ command: Command, output: CommandOutput) async throws -> CommandResult {
        asked.withLock { $0.append(command.description) }
        return CommandResult(termination: .exited(2), output: "refused: \(command)")
    }
}

@Suite("Filed resolved configs", .tags(.unit), .scoped)
struct ResolvedConfigCacheTests {
    @Test("the config key follows what decides the config, and nothing else")
    func configKeys() throws {
        let base = try KernelBuildTests.plan(.x86_64)
        #expect(base.configKey == (try KernelBuildTests.plan(.x86_64)).configKey)
        // Neither the build's time stamp, nor where, how fast or through what it compiles.
        #expect(try KernelBuildTests.relocated(base).with { $0.sourceDateEpoch = 1 }.configKey == base.configKey)

        let dir = try TestSupport.temporaryDirectory()
        var variants = try KernelBuildTests.configVariants(of: base, scratch: dir)
        variants.append(("cross compiling", try base.with { $0.hostMachine = "aarch64" }))

        var keys: Set<SHA256Digest> = [base.configKey]
        for (what, variant) in variants {
            #expect(keys.insert(variant.configKey).inserted, "changing the \(what) did not change the config key")
        }
    }

    @Test("an entry appears whole, is kept once filed, and a broken one is replaced")
    func filing() throws {
        let dir = try TestSupport.temporaryDirectory()
        let cache = ResolvedConfigCache(cacheDirectory: dir + "/cache")
        let key = SHA256Digest.of("inputs")
        #expect(cache.entry(key) == nil)
        try TestSupport.write("CONFIG_A=y\n", to: dir + "/config")
        try TestSupport.write("log one\n", to: dir + "/config.log")

        // A folder left with one file is not an entry, and filing replaces it.
        try TestSupport.write("CONFIG_HALF=y\n", to: cache.path(for: key) + "/config")
        #expect(cache.entry(key) == nil)
        try cache.store(config: dir + "/config", log: dir + "/config.log", key: key)
        let entry = try #require(cache.entry(key))
        #expect(try FileStore.readText(entry.config) == "CONFIG_A=y\n")
        #expect(try FileStore.readText(entry.log) == "log one\n")

        // Equal keys resolve alike: a second filing leaves the first.
        try TestSupport.write("CONFIG_B=y\n", to: dir + "/config")
        try cache.store(config: dir + "/config", log: dir + "/config.log", key: key)
        #expect(try FileStore.readText(entry.config) == "CONFIG_A=y\n")
        #expect(try FileManager.default.contentsOfDirectory(atPath: cache.directory) == [key.hex])

        cache.remove(key)
        #expect(cache.entry(key) == nil)
    }

    @Test("a filed config that holds every request goes into the build directory without running make; one that misses a request is dropped")
    func reuse() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let plan = try KernelBuildTests.plan(.x86_64).with { $0.buildDirectory = dir + "/build" }
        let cache = ResolvedConfigCache(cacheDirectory: dir + "/cache")
        let requests = try ConfigFragment.combine(plan.target.fragments).requests
        let resolved = KernelConfig(parsing: "CONFIG_CC_VERSION_TEXT=\"gcc\"\n").merging(requests).text
        try TestSupport.write(resolved, to: dir + "/filed/config")
        try TestSupport.write("make tinyconfig output\n", to: dir + "/filed/config.log")
        try cache.store(config: dir + "/filed/config", log: dir + "/filed/config.log", key: plan.configKey)

        let runner = RecordingRefuser()
        let console = Console.recording()
        let configurator = KernelConfigurator(runner: runner, console: console)
        let tree = SourceTree(key: plan.treeKey, path: dir + "/no-tree", sourceSHA256: .of("tarball"), patches: [], seriesName: nil)
        let build = plan.buildDirectory
        let verification = try await cache.resolve(
            plan, tree: tree, outputConfig: dir + "/work/config", logFile: dir + "/work/config.log", fresh: false, configurator: configurator
        )
        #expect(runner.commands.isEmpty, "\(runner.commands)")
        #expect(verification.passed)
        #expect(verification.checked == requests.count)
        #expect(try FileStore.readText(build + "/.config") == resolved)
        #expect(try FileStore.readText(dir + "/work/config") == resolved)
        let log = try FileStore.readText(dir + "/work/config.log")
        #expect(log.hasPrefix("make tinyconfig output\n"))
        #expect(log.contains("resolved earlier from the same inputs; taken from \(cache.path(for: plan.configKey))"))
        #expect(console.recordedLines.contains { $0.contains("reusing the config resolved earlier from the same inputs") }, "\(console.recordedLines)")

        // A filed config that misses a request is not used: the configurator resolves again
        // (here the refusing runner makes that fail) and the entry is gone.
        let missing = try #require(requests.first { $0.value == .yes })
        let broken = resolved.replacingOccurrences(of: "\nCONFIG_\(missing.symbol)=y\n", with: "\n")
        #expect(broken != resolved)
        cache.remove(plan.configKey)
        try TestSupport.write(broken, to: dir + "/filed/config")
        try cache.store(config: dir + "/filed/config", log: dir + "/filed/config.log", key: plan.configKey)
        let error = await #expect(throws: VMFactoryError.self) {
            try await cache.resolve(
                plan, tree: tree, outputConfig: dir + "/work/config", logFile: dir + "/work/config.log", fresh: false, configurator: configurator
            )
        }
        #expect(error?.message.contains("make tinyconfig for x86_64 failed") == true, "\(String(describing: error))")
        #expect(runner.commands.count == 1 && runner.commands[0].hasSuffix(" tinyconfig"), "\(runner.commands)")
        #expect(cache.entry(plan.configKey) == nil)
        #expect(console.recordedLines.contains { $0.contains("misses 1 requested settings; resolving again") }, "\(console.recordedLines)")
    }
}
