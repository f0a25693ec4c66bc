import Foundation
import Testing
@testable import VMFactoryCore
@testable import VMFactoryKernel

/// Real configurations of the pinned kernel: make, Kconfig and the cross compiler, no stand-ins.
@Suite("Configuring the pinned kernel", .tags(.integration), .scoped, .needsPinnedKernel, .needsTool("make"), .needsTool("s390x-linux-gnu-gcc"), .serialized)
struct ConfigIntegrationTests {
    @Test("the minimal recipe configures for both targets with every requested symbol verified")
    func minimalBothTargets() async throws {
        let output = try TestSupport.temporaryDirectory()
        let cache = try await TestSupport.scopedCache()
        let factory = try TestSupport.factory(cache: cache, output: output)
        let recipe = try factory.recipes.load("minimal")
        let results = try await factory.configure(recipe, targets: [.x86_64, .s390x])

        #expect(results.map(\.target) == [.x86_64, .s390x])
        for result in results {
            #expect(result.passed, "\(result.target): \(result.missLines)")
            let requested = try ConfigFragment.combine(try #require(recipe.target(result.target)).fragments).requests
            #expect(result.checked == requested.count)
            #expect(result.config == output + "/minimal/\(result.target)/config")
            // Parse the written file independently and check each request against it.
            let config = try KernelConfig.load(result.config)
            for request in requested {
                #expect(config[request.symbol].satisfies(request.value, modulesEnabled: config.modulesEnabled), "CONFIG_\(request.symbol)")
            }
        }
        // Filed under the key a build of this recipe looks up, with these bytes.
        for target in [Target.x86_64, .s390x] {
            let key = try await factory.plan(recipe, target: target, options: BuildOptions()).configKey
            let filed = try #require(ResolvedConfigCache(cacheDirectory: cache).entry(key), "the \(target) config was not filed")
            #expect(try FileStore.readText(filed.config) == FileStore.readText(output + "/minimal/\(target)/config"))
        }
        let x86 = try KernelConfig.load(output + "/minimal/x86_64/config")
        #expect(x86["64BIT"] == .yes)
        #expect(x86["PVH"] == .yes)
        #expect(x86["VIRTIO_MMIO_CMDLINE_DEVICES"] == .yes)
        #expect(x86["SERIAL_8250_CONSOLE"] == .yes)
        let s390 = try KernelConfig.load(output + "/minimal/s390x/config")
        #expect(s390["KERNEL_UNCOMPRESSED"] == .yes)
        #expect(s390["S390_GUEST"] == .yes)
        #expect(s390["SCLP_CONSOLE"] == .yes)
        #expect(s390["VIRTIO_FS"] == .yes)
        #expect(s390["VSOCKETS"] == .yes)
        #expect(!s390.contains("SERIAL_8250"))
    }

    @Test("VIRTIO_FS asked for with FUSE turned off fails, naming the symbol, the fragment line and FUSE_FS")
    func unmetDependency() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let name = "nofuse"
        try TestSupport.writeNoFuseRecipe(named: name, in: dir)
        let arguments = ["config", "--recipe", dir + "/recipes/\(name).yaml", "--target", "x86_64", "--offline", "--format", "json",
                         "--cache-dir", try await TestSupport.scopedCache(), "--output-dir", dir + "/outputs"] + (try TestSupport.sourceDirArguments())
        let result = await TestSupport.runCommand(arguments, runner: TestSupport.runner)

        #expect(result.status == 1)
        let reports = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]], "stdout: \(result.stdout)")
        let report = try #require(reports.first)
        #expect(report["target"] as? String == "x86_64")
        let misses = try #require(report["misses"] as? [[String: Any]])
        let miss = try #require(misses.first { $0["symbol"] as? String == "VIRTIO_FS" }, "\(misses)")
        #expect(miss["requested"] as? String == "y")
        #expect(miss["resolved"] as? String == "n")
        #expect((miss["requestedAt"] as? String)?.hasSuffix("recipes/configs/common/nofuse.conf:3") == true)
        #expect((miss["reasons"] as? [String]) == ["depends on FUSE_FS [=n]"])
        // FUSE_FS itself landed as asked (off), so it is not a miss.
        #expect(!misses.contains { $0["symbol"] as? String == "FUSE_FS" })
        #expect(FileStore.isRegularFile(dir + "/outputs/\(name)/x86_64/config"))
        #expect(result.stderr.contains("the resolved config does not match the fragments"))
    }
}

