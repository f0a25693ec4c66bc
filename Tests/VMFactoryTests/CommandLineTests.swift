import ArgumentParser
import Foundation
import Testing
@testable import VMFactoryCommands
@testable import VMFactoryCore
@testable import VMFactoryExec
@testable import VMFactoryKernel

/// The commands parsed and run in this process, with their output captured and a context
/// that runs no process.
@Suite("Command line", .tags(.unit), .scoped)
struct CommandLineTests {
    @Test("vmfactory recipes lists each recipe with its description, as text and as JSON")
    func recipes() async throws {
        let text = await TestSupport.runCommand(["recipes"])
        #expect(text.status == 0)
        let lines = text.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 2)
        #expect(lines.first?.hasPrefix("container  Container microVM kernel for vmfactory run") == true)
        #expect(lines.last?.hasPrefix("minimal    Minimal microVM kernel") == true)
        let json = await TestSupport.runCommand(["recipes", "--format", "json"])
        let entries = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]])
        #expect(entries.map { $0["name"] as? String } == ["container", "minimal"])
        #expect(entries.last?["path"] as? String == TestSupport.repositoryRoot + "/recipes/minimal.yaml")
    }

    @Test("a bad recipe fails with its position on stderr, or as a JSON error on stdout")
    func badRecipe() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write(RecipeTests.good.replacingOccurrences(of: "  x86_64:", with: "  riscv64:"), to: dir + "/r.yaml")
        let text = await TestSupport.runCommand(["config", "--recipe", dir + "/r.yaml"])
        #expect(text.status == 1)
        #expect(text.stdout.isEmpty)
        #expect(text.stderr.hasPrefix("error: \(dir)/r.yaml:12:3: targets.riscv64: unknown target 'riscv64'"), "\(text.stderr)")

        let json = await TestSupport.runCommand(["config", "--recipe", dir + "/r.yaml", "--format", "json"])
        #expect(json.status == 1)
        let payload = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: [String: Any]])
        #expect(payload["error"]?["code"] as? String == "invalid-recipe")
        #expect((payload["error"]?["message"] as? String)?.contains("unknown target 'riscv64'") == true)
    }

    @Test("contradictory and out-of-range flags are refused with exit 64 before anything runs", arguments: [
        (["fetch", "--recipe", "minimal", "-v", "-q"], "--verbose and --quiet cannot be used together"),
        (["boot", "--recipe", "minimal", "--target", "x86_64", "--no-initrd", "--initrd", "x"], "--no-initrd and --initrd cannot be used together"),
        (["boot", "--recipe", "minimal", "--target", "x86_64", "--cpus", "0"], "--cpus takes a number from 1 to 64"),
        (["bench", "--recipe", "minimal", "--target", "x86_64", "--runs", "0"], "--runs takes a number from 1 to 10000"),
        (["bench", "--recipe", "minimal", "--target", "x86_64", "--icount", "--accel", "kvm"], "--icount needs TCG"),
        (["boot", "--recipe", "minimal", "--target", "riscv64"], "The value 'riscv64' is invalid for '--target <target>'"),
        (["clean", "--all", "--recipe", "minimal"], "give --recipe or --all, not both"),
    ])
    func validation(_ arguments: [String], _ message: String) async throws {
        let result = await TestSupport.runCommand(arguments)
        #expect(result.status == 64, "\(result.stderr)")
        #expect(result.stderr.contains(message), "\(result.stderr)")
        #expect(result.stdout.isEmpty)
    }

    @Test("help shows a duration's default as it is written on the command line", arguments: [
        (["boot", "--help"], "--timeout <timeout>", "(default: 60s)"),
        (["bench", "--help"], "--timeout <timeout>", "(default: 60s)"),
        (["run", "--help"], "--stop-timeout <stop-timeout>", "(default: 10s)"),
    ])
    func durationDefaults(_ arguments: [String], _ option: String, _ shown: String) async throws {
        let result = await TestSupport.runCommand(arguments)
        #expect(result.status == 0, "\(result.stderr)")
        // The option's help runs over several wrapped lines; the default closes it.
        let help = result.stdout.components(separatedBy: .whitespacesAndNewlines).filter { !$0.isEmpty }.joined(separator: " ")
        let start = try #require(help.range(of: option), "\(result.stdout)")
        let rest = help[start.upperBound...]
        let end = rest.range(of: " -")?.lowerBound ?? rest.endIndex
        #expect(rest[..<end].hasSuffix(shown), "\(rest[..<end])")
        #expect(!result.stdout.contains("DurationArgument"))
    }

    @Test("doctor names what is missing from PATH and prints the one apt-get line that adds it")
    func doctorMissing() async throws {
        // A PATH with only make and gcc on it (stand-ins that do nothing).
        let bin = try TestSupport.temporaryDirectory()
        for tool in ["make", "gcc"] { try TestSupport.write("#!/bin/sh\n", to: bin + "/" + tool, mode: 0o755) }
        let result = await TestSupport.runCommand(["doctor", "--target", "s390x", "--format", "json"], environment: ["PATH": bin])
        #expect(result.status == 1)
        let report = try JSONDecoder().decode(Doctor.Report.self, from: Data(result.stdout.utf8))
        let found = Set(report.checks.filter(\.found).map(\.name))
        #expect(found.isSuperset(of: ["make", "gcc"]))
        #expect(!found.contains("flex") && !found.contains("s390x-linux-gnu-gcc") && !found.contains("qemu-system-s390x"))
        #expect(report.missingPackages.starts(with: ["flex", "bison", "bc", "patch"]), "\(report.missingPackages)")
        for package in ["gcc-s390x-linux-gnu", "qemu-system-misc", "qemu-utils"] {
            #expect(report.missingPackages.contains(package), "\(package)")
        }
        #expect(!report.missingPackages.contains("make") && !report.missingPackages.contains("qemu-system-x86"))
        #expect(report.installCommand?.contains("apt-get install -y --no-install-recommends flex bison bc patch") == true)

        let line = await TestSupport.runCommand(["doctor", "--target", "s390x", "--missing-packages"], environment: ["PATH": bin])
        #expect(line.stdout.trimmingCharacters(in: .newlines) == report.missingPackages.joined(separator: " "))
    }

    /// scripts/test sets the machine up before it runs the tests.
    @Test("on a machine set up by scripts/setup, doctor finds every tool", .tags(.integration))
    func doctorOnSetUpMachine() async throws {
        let result = await TestSupport.runCommand(["doctor", "--missing-packages"])
        #expect(result.status == 0, "\(result.stdout)")
        #expect(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
    }

    @Test("doctor and clean need no checkout; commands that need recipes say how to find them")
    func outsideACheckout() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write("x", to: dir + "/cache/builds/minimal/x86_64/vmlinux")
        let stdout = TextOutput.memory(), stderr = TextOutput.memory()
        let context = CommandContext(
            environment: ["PATH": TestSupport.environment["PATH"]!, "HOME": dir], currentDirectory: "/",
            executablePath: "/nonexistent/bin/vmfactory", stdout: stdout, stderr: stderr, runner: RefusingRunner(), handlesSignals: false
        )
        #expect(await VMFactoryCommand.run(["clean", "--cache-dir", dir + "/cache"], in: context) == 0, "\(stderr.text)")
        #expect(!FileStore.exists(dir + "/cache/builds"))
        #expect(stdout.text.contains("removed \(dir)/cache/builds"))
        #expect(await VMFactoryCommand.run(["doctor", "--format", "json"], in: context) <= 1)
        #expect(stdout.text.contains("\"checks\""))
        #expect(await VMFactoryCommand.run(["recipes"], in: context) == 1)
        #expect(stderr.text.contains("cannot find vmfactory's recipes/ and kernel-configs/"), "\(stderr.text)")
        #expect(stderr.text.contains("set VMFACTORY_HOME to the checkout"))
    }

    /// Runs `body` at the command boundary, as a command with `flags` would.
    static func boundary(_ flags: [String], _ body: @escaping @Sendable (CommandContext, Console) async throws -> Output) async throws -> (code: Int32, stdout: String, stderr: String) {
        let stdout = TextOutput.memory(), stderr = TextOutput.memory()
        let context = CommandContext(
            environment: TestSupport.environment, currentDirectory: TestSupport.repositoryRoot, executablePath: TestSupport.executable,
            stdout: stdout, stderr: stderr, runner: RefusingRunner(), handlesSignals: false
        )
        let options = try GlobalOptions.parse(flags)
        var code: Int32 = 0
        do {
            try await CommandContext.$current.withValue(context) { try await options.perform(body) }
        } catch let exit as ExitCode {
            code = exit.rawValue
        }
        return (code, stdout.text, stderr.text)
    }

    @Test("every error becomes vmfactory's own at the boundary: interruption exits 130, file errors say what to check, and JSON output never hides a failure as {}")
    func errorBoundary() async throws {
        let cancelled = try await Self.boundary([]) { _, _ in throw CancellationError() }
        #expect(cancelled.code == 130)
        #expect(cancelled.stderr.hasPrefix("error: interrupted"), "\(cancelled.stderr)")

        let missing = try await Self.boundary(["--format", "json"]) { _, _ in
            _ = try FileManager.default.attributesOfItem(atPath: "/nonexistent/file")
            return Output(text: "", value: "unreachable")
        }
        #expect(missing.code == 1)
        let payload = try #require(try JSONSerialization.jsonObject(with: Data(missing.stdout.utf8)) as? [String: [String: Any]])
        #expect(payload["error"]?["code"] as? String == "io")
        #expect(payload["error"]?["hint"] as? String != nil)

        // A value JSON cannot hold (NaN) is an error on stdout, not `{}`.
        let unencodable = try await Self.boundary(["--format", "json"]) { _, _ in Output(text: "", value: [Double.nan]) }
        #expect(unencodable.code == 1)
        #expect(!unencodable.stdout.contains("{}"))
        let error = try #require(try JSONSerialization.jsonObject(with: Data(unencodable.stdout.utf8)) as? [String: [String: Any]])
        #expect(error["error"]?["code"] as? String == "internal")
        #expect((error["error"]?["message"] as? String)?.contains("cannot encode") == true)
    }

    @Test("--print-qemu prints the machine's argv and runs nothing")
    func printQemu() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write("kernel", to: dir + "/vmlinux")
        try TestSupport.write("initrd", to: dir + "/initrd")
        let result = await TestSupport.runCommand([
            "boot", "--recipe", "minimal", "--target", "x86_64", "--kernel", dir + "/vmlinux", "--initrd", dir + "/initrd",
            "--accel", "tcg", "--print-qemu", "--append", "loglevel=3", "--output-dir", dir + "/outputs",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.hasPrefix("qemu-system-x86_64 -M microvm,"))
        #expect(result.stdout.contains("-kernel \(dir)/vmlinux -initrd \(dir)/initrd"))
        #expect(result.stdout.contains("loglevel=3"))
    }

    @Test("--cmdline and --cmdline-preset replace the recipe's command line; a runtime without guests of the target is refused")
    func cmdlineOptions() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write("kernel", to: dir + "/vmlinux")
        try TestSupport.write("initrd", to: dir + "/initrd")
        func printed(_ target: String, _ extra: [String]) async -> TestSupport.Run {
            await TestSupport.runCommand([
                "boot", "--recipe", "minimal", "--target", target, "--kernel", dir + "/vmlinux", "--initrd", dir + "/initrd",
                "--accel", "tcg", "--print-qemu", "--output-dir", dir + "/outputs", "--format", "json",
            ] + extra)
        }
        func argv(_ run: TestSupport.Run) throws -> [String] { try JSONDecoder().decode([String].self, from: Data(run.stdout.utf8)) }
        func append(_ run: TestSupport.Run) throws -> String? {
            let words = try argv(run)
            return words.firstIndex(of: "-append").map { words[$0 + 1] }
        }
        #expect(try append(await printed("x86_64", ["--cmdline", "console=ttyS0 quiet", "--append", "loglevel=3"])) == "console=ttyS0 quiet loglevel=3")
        #expect(try append(await printed("x86_64", ["--cmdline-preset", "firecracker"])) == "console=ttyS0 reboot=k panic=1 pci=off")
        // Kata's virtio console: virtio-serial over MMIO on x86_64, over channel I/O on s390x.
        let kata = try argv(await printed("x86_64", ["--cmdline-preset", "kata"]))
        #expect(kata.contains("virtio-serial-device") && kata.contains("virtconsole,chardev=console") && !kata.contains("-serial"))
        #expect(kata[kata.firstIndex(of: "-append")! + 1].hasPrefix("tsc=reliable no_timer_check "))
        let kataS390 = try argv(await printed("s390x", ["--cmdline-preset", "kata"]))
        #expect(kataS390.contains("virtio-serial-ccw") && !kataS390.contains("sclpconsole,chardev=console"))
        #expect(try append(await printed("s390x", ["--cmdline-preset", "qemu"])) == "console=ttysclp0 panic=-1 quiet")

        let firecracker = await printed("s390x", ["--cmdline-preset", "firecracker"])
        #expect(firecracker.status == 1)
        #expect(firecracker.stdout.contains("Firecracker runs no s390x guests"), "\(firecracker.stdout)")
        let both = await printed("x86_64", ["--cmdline", "x", "--cmdline-preset", "qemu"])
        #expect(both.status == 64)
    }
}
