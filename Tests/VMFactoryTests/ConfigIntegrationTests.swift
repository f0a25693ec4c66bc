import Foundation
import Testing
@testable import VMFactory

/// Real configurations of the pinned kernel: make, Kconfig and the cross compiler, no stand-ins.
@Suite("Configuring the pinned kernel", .needsPinnedKernel, .needsTool("make"), .needsTool("s390x-linux-gnu-gcc"), .serialized)
struct ConfigIntegrationTests {
    @Test("the minimal recipe configures for both targets with every requested symbol verified")
    func minimalBothTargets() async throws {
        let output = try TestSupport.temporaryDirectory()
        let factory = Factory(workspace: TestSupport.workspace(output: output), console: .recording())
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
        // Filed under the key a build of this recipe looks up, with these bytes. (s390x only:
        // the build suite, which runs beside this one, plants and drops the x86_64 entry.)
        let key = try await factory.plan(recipe, target: .s390x, options: BuildOptions()).configKey
        let filed = try #require(ResolvedConfigCache(cacheDirectory: TestSupport.sharedCache).entry(key), "the s390x config was not filed")
        #expect(try FileStore.readText(filed.config) == FileStore.readText(output + "/minimal/s390x/config"))
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
        try FileStore.removeTree(output)
    }

    @Test("VIRTIO_FS asked for with FUSE turned off fails, naming the symbol, the fragment line and FUSE_FS")
    func unmetDependency() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let name = "nofuse-\(UUID().uuidString.prefix(6))"
        try TestSupport.writeNoFuseRecipe(named: name, in: dir)

        var arguments = ["config", "--recipe", dir + "/recipes/\(name).yaml", "--target", "x86_64", "--offline", "--format", "json",
                         "--cache-dir", TestSupport.sharedCache, "--output-dir", dir + "/outputs"]
        for source in TestSupport.kernelSourceDirs { arguments += ["--source-dir", source] }
        let result = try await TestSupport.runCLI(arguments)

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
        try FileStore.removeTree(dir)
        try FileStore.removeTree(TestSupport.sharedCache + "/builds/\(name)")
    }
}

@Suite("Command line")
struct CommandLineTests {
    @Test("vmfactory recipes lists each recipe with its description, as text and as JSON")
    func recipes() async throws {
        let text = try await TestSupport.runCLI(["recipes"])
        #expect(text.status == 0)
        #expect(text.stdout.hasPrefix("minimal  Minimal microVM kernel"))
        let json = try await TestSupport.runCLI(["recipes", "--format", "json"])
        let entries = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]])
        #expect(entries.first?["name"] as? String == "minimal")
        #expect(entries.first?["path"] as? String == TestSupport.repositoryRoot + "/recipes/minimal.yaml")
    }

    @Test("a bad recipe fails with its position on stderr, or as a JSON error on stdout")
    func badRecipe() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write(RecipeTests.good.replacingOccurrences(of: "  x86_64:", with: "  riscv64:"), to: dir + "/r.yaml")
        let text = try await TestSupport.runCLI(["config", "--recipe", dir + "/r.yaml"])
        #expect(text.status == 1)
        #expect(text.stdout.isEmpty)
        #expect(text.stderr.hasPrefix("error: \(dir)/r.yaml:12:3: targets.riscv64: unknown target 'riscv64'"))

        let json = try await TestSupport.runCLI(["config", "--recipe", dir + "/r.yaml", "--format", "json"])
        #expect(json.status == 1)
        let payload = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: [String: Any]])
        #expect(payload["error"]?["code"] as? String == "invalid-recipe")
        #expect((payload["error"]?["message"] as? String)?.contains("unknown target 'riscv64'") == true)
    }

    @Test("contradictory flags are refused before anything runs")
    func validation() async throws {
        let result = try await TestSupport.runCLI(["fetch", "--recipe", "minimal", "-v", "-q"])
        #expect(result.status == 64)
        #expect(result.stderr.contains("--verbose and --quiet cannot be used together"))
    }

    @Test("doctor names every missing tool and prints one apt-get line for them")
    func doctor() async throws {
        let report = Doctor.check(targets: [.x86_64, .s390x], environment: ["PATH": "/nonexistent"])
        #expect(!report.ok)
        for name in ["make", "gcc", "flex", "bison", "bc", "s390x-linux-gnu-gcc", "qemu-system-x86_64", "qemu-system-s390x", "qemu-img"] {
            #expect(report.checks.first { $0.name == name }?.found == false, "\(name)")
        }
        let command = try #require(report.installCommand)
        #expect(command.contains("apt-get install -y --no-install-recommends make gcc flex bison bc patch"))
        #expect(command.contains("gcc-s390x-linux-gnu"))
        #expect(command.contains("qemu-system-x86"))
        #expect(command.contains("qemu-system-misc"))
        #expect(command.contains("qemu-utils"))
        #expect(Set(report.missingPackages).count == report.missingPackages.count)

        // On this machine (CI installs everything) the real check passes.
        let live = try await TestSupport.runCLI(["doctor", "--format", "json"])
        let json = try #require(try JSONSerialization.jsonObject(with: Data(live.stdout.utf8)) as? [String: Any])
        #expect((json["checks"] as? [[String: Any]])?.count == Doctor.requirements(for: Target.allCases).count)
        #expect(live.status == (Doctor.check(targets: Target.allCases).ok ? 0 : 1))
    }
}
