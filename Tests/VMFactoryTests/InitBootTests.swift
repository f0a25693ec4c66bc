import Foundation
import Synchronization
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryBoot
@testable import VMFactoryCore
@testable import VMFactoryKernel

/// Real boots under TCG of the kernels the build makes, with the init and initrds it writes.
@Suite(
    "Booting the init under QEMU", .tags(.boot), .scoped, .needsPinnedKernel, .needsTool("make"), .needsTool("s390x-linux-gnu-gcc"),
    .needsTool("qemu-system-x86_64"), .needsTool("qemu-system-s390x"), .serialized
)
struct InitBootTests {
    static func output(_ target: Target) async throws -> (directory: String, manifest: BuildManifest) {
        let built = try await SharedBuild.shared.get()
        let result = try #require(built.results.first { $0.target == target })
        return (result.outputDirectory, result.manifest)
    }

    static func kernel(_ target: Target) async throws -> String {
        let (directory, _) = try await output(target)
        return directory + (target == .x86_64 ? "/vmlinux" : "/bzImage")
    }

    static func boot(_ target: Target, initrd: String, cmdline: String? = nil, extra: String = "") async throws -> BootRun {
        let (_, manifest) = try await output(target)
        let line = (cmdline ?? manifest.kernel?.cmdline ?? "") + (extra.isEmpty ? "" : " " + extra)
        let machine = QEMUMachine(target: target, kernel: try await kernel(target), initrd: initrd, cmdline: line, accelerator: .tcg)
        let run = try await TestSupport.bootRunner.run(machine.command, timeout: TestSupport.bootPatience)
        #expect(run.ending == .exited, "QEMU did not exit by itself; console:\n\(run.console)\nstderr: \(run.stderr)")
        return run
    }

    /// An initrd for `target` from a recipe whose `initrd:` section is `initrd`.
    static func initrd(_ target: Target, initrd: String, in directory: String) async throws -> String {
        let recipe = try TestSupport.recipe(named: "boot-\(target)", initrd: initrd, in: directory)
        let (directoryOfBuild, _) = try await output(target)
        let (plan, _, _) = try await InitrdIntegrationTests.build(recipe, target: target, config: directoryOfBuild + "/config", work: directory + "/work-\(target)")
        return directory + "/work-\(target)/" + plan.fileName
    }

    @Test("the built initrd says ready, and with quiet nothing else reaches the console", arguments: Target.allCases)
    func readyAndQuiet(_ target: Target) async throws {
        let (directory, manifest) = try await Self.output(target)
        let initrdName = try #require(manifest.artifacts(of: .initrd).first { $0.name.hasPrefix("initrd.cpio") }?.name)
        let run = try await Self.boot(target, initrd: directory + "/" + initrdName)
        let ready = try #require(run.firstLine(containing: "vmfactory-init: ready "), "console:\n\(run.console)")
        #expect(Double(ready.text.split(separator: " ").last ?? "") != nil, "no CLOCK_BOOTTIME figure in '\(ready.text)'")
        #expect(run.lines.map(\.text).last == "vmfactory-init: exit 0")
        #expect(run.lines.allSatisfy { $0.text.hasPrefix("vmfactory-init: ") }, "more than the init on a quiet console:\n\(run.console)")
        // x86_64: isa-debug-exit carries code 0 as QEMU status 1; s390x powers off.
        #expect(run.status == (target == .x86_64 ? QEMUMachine.debugExitStatus(forCode: 0) : 0))
    }

    @Test("an entrypoint that prints and exits 7 ends the VM, its output and exit 7 on the console", arguments: Target.allCases)
    func entrypointExitCode(_ target: Target) async throws {
        let dir = try TestSupport.temporaryDirectory()
        let workload = try await TestSupport.compileFixture("workload-exit7", for: target, into: dir)
        let initrd = try await Self.initrd(target, initrd: """
              entrypoint: [/bin/workload, first]
              env: {GREETING: hello world}
              files:
                - {source: \(workload), destination: /bin/workload, mode: "0755"}
            """, in: dir)
        let run = try await Self.boot(target, initrd: initrd)
        let texts = run.lines.map(\.text)
        #expect(texts.contains("hello from the workload"), "console:\n\(run.console)")
        #expect(texts.contains("arg: first"))
        #expect(texts.contains("GREETING=hello world"))
        #expect(texts.last == "vmfactory-init: exit 7")
        if target == .x86_64 {
            #expect(run.status == QEMUMachine.debugExitStatus(forCode: 7), "QEMU's exit status does not carry 7")
            #expect(QEMUMachine.code(fromDebugExitStatus: run.status ?? 0) == 7)
        } else {
            #expect(run.status == 0)
        }

        // The words after "--" replace the entrypoint; one that does not exist is reported
        // with its errno text, and the VM still ends.
        let missing = try await Self.boot(target, initrd: initrd, extra: "-- /bin/nope")
        #expect(missing.lines.map(\.text).contains("vmfactory-init: cannot run /bin/nope: No such file or directory"), "console:\n\(missing.console)")
        #expect(missing.lines.map(\.text).last == "vmfactory-init: exit 127")
    }

    @Test("an init that simply exits: the kernel restarts without a panic, and quiet hides it", arguments: Target.allCases)
    func plainInitExits(_ target: Target) async throws {
        let dir = try TestSupport.temporaryDirectory()
        let plain = try await TestSupport.compileFixture("plain-init", for: target, into: dir)
        let entries = try InitrdLayout.entries(init: try Data(contentsOf: URL(fileURLWithPath: plain)), spec: InitrdSpec(), mtime: 0)
        try ArchiveWriter.write(entries, to: dir + "/plain.cpio", format: .cpioNewc)

        let quiet = try await Self.boot(target, initrd: dir + "/plain.cpio")
        #expect(quiet.lines.map(\.text) == ["plain init says bye"], "console:\n\(quiet.console)")
        #expect(!quiet.console.contains("Kernel panic"))
        #expect(!quiet.console.contains("reboot:"))

        // Without quiet the patched kernel says how init ended, still without a panic.
        let (_, manifest) = try await Self.output(target)
        let loud = try await Self.boot(target, initrd: dir + "/plain.cpio", cmdline: (manifest.kernel?.cmdline ?? "").replacingOccurrences(of: "quiet", with: ""))
        #expect(loud.console.contains("init exited with code 3"), "console:\n\(loud.console)")
        #expect(!loud.console.contains("Kernel panic"))
    }

    @Test("an entrypoint that leaves orphans behind ends with every one reaped and no zombie", arguments: Target.allCases)
    func orphansAreReaped(_ target: Target) async throws {
        let dir = try TestSupport.temporaryDirectory()
        let orphans = try await TestSupport.compileFixture("orphans", for: target, into: dir)
        let initrd = try await Self.initrd(target, initrd: """
              entrypoint: [/bin/orphans]
              files:
                - {source: \(orphans), destination: /bin/orphans, mode: "0755"}
            """, in: dir)
        let run = try await Self.boot(target, initrd: initrd, extra: "vmf.verbose")
        let texts = run.lines.map(\.text)
        #expect(texts.contains("zombies: 0"), "console:\n\(run.console)")
        #expect(texts.contains("vmfactory-init: reaped 3 orphaned processes (0 needed SIGKILL); none left"))
        #expect(texts.last == "vmfactory-init: exit 0")
    }

    /// `vmfactory boot` of the shared x86_64 kernel with an initrd that runs `slow-printer`.
    static func slowBoot(seconds: Int, in dir: String) async throws -> Command {
        let printer = try await TestSupport.compileFixture("slow-printer", for: .x86_64, into: dir)
        let initrd = try await Self.initrd(.x86_64, initrd: """
              entrypoint: [/bin/slow-printer, "\(seconds)"]
              files:
                - {source: \(printer), destination: /bin/slow-printer, mode: "0755"}
            """, in: dir)
        let built = try await SharedBuild.shared.get()
        return Command(TestSupport.executable, [
            "boot", "--recipe", "container", "--target", "x86_64", "--accel", "tcg", "--timeout", TestSupport.bootTimeout,
            "--cache-dir", TestSupport.sharedCache, "--output-dir", built.output, "--initrd", initrd,
        ])
    }

    @Test("vmfactory boot into a pipe streams each console line as it comes, not when QEMU exits")
    func consoleStreamsIntoAPipe() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let command = try await Self.slowBoot(seconds: 6, in: dir)
        let started = ContinuousClock.now
        let vmfactory = try await ChildProcess.spawn(command, environment: TestSupport.environment, stdout: .pipe, stderr: .null)
        let seen = Mutex<[(String, Double)]>([])
        await PipeReader.readLines(vmfactory.stdout!) { line in
            seen.withLock { $0.append((line, (ContinuousClock.now - started).seconds)) }
            return true
        }
        #expect(await vmfactory.wait() == .exited(0))
        let lines = seen.withLock { $0 }
        let first = try #require(lines.first { $0.0 == "first" }, "\(lines)")
        let second = try #require(lines.first { $0.0 == "second" }, "\(lines)")
        // The guest waits 6 s between the two lines; the first was in the pipe long before.
        #expect(second.1 - first.1 > 4, "first at \(first.1) s, second at \(second.1) s")
    }

    @Test("vmfactory killed with SIGKILL, or stopped with SIGTERM, takes QEMU with it within seconds", arguments: [SIGKILL, SIGTERM])
    func noQEMUOutlivesVmfactory(_ signal: Int32) async throws {
        let dir = try TestSupport.temporaryDirectory()
        // A guest that would otherwise run for a minute.
        let command = try await Self.slowBoot(seconds: 60, in: dir)
        let vmfactory = try await ChildProcess.spawn(command, environment: TestSupport.environment, stdout: .pipe, stderr: .null)
        let firstLine = Mutex(false)
        let reader = Task {
            await PipeReader.readLines(vmfactory.stdout!) { line in
                if line == "first" { firstLine.withLock { $0 = true } }
                return true
            }
        }
        #expect(await TestSupport.eventually(within: 60) { firstLine.withLock { $0 } }, "the guest never printed its first line")
        let qemu = try #require(ProcessTable.children(of: vmfactory.pid).first { $0.command.contains("qemu-system-x86_64") }, "no QEMU below vmfactory")
        vmfactory.signalLeader(signal)
        let ended = await vmfactory.wait()
        #expect(ended == (signal == SIGKILL ? .signaled(SIGKILL) : .exited(130)))
        let gone = await TestSupport.eventually(within: 5) { !ProcessTable.isAlive(qemu.pid) }
        #expect(gone, "QEMU (pid \(qemu.pid)) still runs after vmfactory ended")
        if !gone { kill(qemu.pid, SIGKILL) }
        await reader.value
    }
}

/// Processes as /proc lists them.
enum ProcessTable {
    struct Entry {
        var pid: pid_t
        var parent: pid_t
        var state: Character
        var command: String
    }

    static func entries() -> [Entry] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { name in
            guard let pid = pid_t(name), let stat = try? String(contentsOfFile: "/proc/\(name)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 2, let parent = pid_t(fields[1]), let state = fields[0].first else { return nil }
            let words = (FileManager.default.contents(atPath: "/proc/\(name)/cmdline") ?? Data()).split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return Entry(pid: pid, parent: parent, state: state, command: words.joined(separator: " "))
        }
    }

    /// The children of `pid`, and theirs.
    static func children(of pid: pid_t) -> [Entry] {
        let all = entries()
        var found: [Entry] = []
        var parents: Set<pid_t> = [pid]
        while true {
            let next = all.filter { parents.contains($0.parent) && !found.map(\.pid).contains($0.pid) }
            if next.isEmpty { return found }
            found += next
            parents = Set(next.map(\.pid))
        }
    }

    /// Running, not a zombie.
    static func isAlive(_ pid: pid_t) -> Bool {
        entries().contains { $0.pid == pid && $0.state != "Z" && $0.state != "X" }
    }
}
