import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryBoot
@testable import VMFactoryCore
@testable import VMFactoryKernel

@Suite("QEMU machines, boot phases and statistics", .tags(.unit), .scoped)
struct BootBenchUnitTests {
    @Test("QEMU's argv per machine, accelerator, console and icount")
    func qemuArgv() {
        let x86 = QEMUMachine(target: .x86_64, kernel: "/k/vmlinux", initrd: "/k/initrd.cpio", cmdline: "quiet console=ttyS0 reboot=t")
        #expect(x86.command.argv == [
            "qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=on,acpi=off,pit=on,pic=on,isa-serial=on", "-accel", "tcg", "-cpu", "max",
            "-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
            "-kernel", "/k/vmlinux", "-initrd", "/k/initrd.cpio", "-append", "quiet console=ttyS0 reboot=t",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ])
        var kvm = x86
        kvm.accelerator = .kvm
        kvm.memory = "1G"
        kvm.cpus = 2
        #expect(kvm.arguments.contains("host") && !kvm.arguments.contains("max"))
        #expect(kvm.arguments[kvm.arguments.firstIndex(of: "-m")! + 1] == "1G")
        #expect(kvm.arguments[kvm.arguments.firstIndex(of: "-smp")! + 1] == "2")

        let virtio = QEMUMachine(target: .x86_64, kernel: "/k", cmdline: "console=hvc0", console: QEMUMachine.console(fromCmdline: "quiet console=hvc0", target: .x86_64), icount: true)
        #expect(virtio.console == .virtio)
        #expect(virtio.arguments.contains("microvm,x-option-roms=off,rtc=on,acpi=off,pit=on,pic=on,isa-serial=off"))
        #expect(virtio.arguments.split(separator: "-device").count > 2)
        #expect(virtio.arguments.contains("virtconsole,chardev=console"))
        #expect(virtio.arguments.contains("shift=0,sleep=off"))
        #expect(!virtio.arguments.contains("-initrd"))

        let s390 = QEMUMachine(target: .s390x, kernel: "/k/bzImage", initrd: "/k/i", cmdline: "console=ttysclp0")
        #expect(s390.command.argv == [
            "qemu-system-s390x", "-M", "s390-ccw-virtio", "-accel", "tcg", "-m", "256M", "-smp", "1",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-chardev", "stdio,id=console", "-device", "sclpconsole,chardev=console",
            "-kernel", "/k/bzImage", "-initrd", "/k/i", "-append", "console=ttysclp0",
        ])
        #expect(QEMUMachine.debugExitStatus(forCode: 7) == 15)
        #expect(QEMUMachine.code(fromDebugExitStatus: 15) == 7)
        #expect(QEMUMachine.code(fromDebugExitStatus: 0) == nil)
    }

    @Test("the kernel command line gets the appended words and the command after --, quoted where needed")
    func cmdline() {
        #expect(Booter.cmdline(base: "quiet console=ttyS0", append: ["loglevel=7"], command: []) == "quiet console=ttyS0 loglevel=7")
        #expect(Booter.cmdline(base: "quiet", append: [], command: ["/bin/sh", "-c", "echo hi there"]) == #"quiet -- /bin/sh -c "echo hi there""#)
        #expect(BootExplainer.cmdline(from: "quiet panic=-1 console=ttyS0 -- /bin/app") == "panic=-1 console=ttyS0 initcall_debug ignore_loglevel -- /bin/app")
    }

    /// A console as a quiet x86_64 boot prints it, and one with kernel messages.
    static let quietConsole = [ConsoleLine(time: 0.412, text: "vmfactory-init: ready 0.334521"), ConsoleLine(time: 0.431, text: "vmfactory-init: exit 7")]
    static let loudConsole = [
        ConsoleLine(time: 0.150, text: "[    0.000000] Linux version 6.1.192 (vmfactory@vmfactory)"),
        ConsoleLine(time: 0.390, text: "[    0.301234] Run /init as init process"),
        ConsoleLine(time: 0.395, text: "[    0.305000]   with arguments:"),
        ConsoleLine(time: 0.420, text: "vmfactory-init: ready 0.334521"),
    ]

    @Test("phases and guest clocks are read from recorded consoles")
    func phases() {
        let quiet = BootPhases(lines: Self.quietConsole, markerText: ConsoleMarkers.ready, exit: 0.440)
        #expect(quiet == BootPhases(firstOutput: 0.412, runInit: nil, marker: 0.412, exit: 0.440, guestRunInit: nil, guestReady: 0.334521))
        #expect(ConsoleMarkers.exitCode(in: Self.quietConsole) == 7)

        let loud = BootPhases(lines: Self.loudConsole, markerText: ConsoleMarkers.ready, exit: nil)
        #expect(loud.firstOutput == 0.150)
        #expect(loud.runInit == 0.390)
        #expect(loud.guestRunInit == 0.301234)
        #expect(loud.marker == 0.420)
        #expect(loud.exit == nil)
        #expect(ConsoleMarkers.exitCode(in: Self.loudConsole) == nil)

        let panic = [
            ConsoleLine(time: 0.3, text: "[    0.250000] VFS: Cannot open root device \"(null)\" or unknown-block(0,0): error -6"),
            ConsoleLine(time: 0.31, text: "[    0.251000] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"),
        ]
        let kernelOnly = BootPhases(lines: panic, markerText: ConsoleMarkers.vfsPanic, exit: 0.35)
        #expect(kernelOnly.marker == 0.31)
        #expect(kernelOnly.guestReady == nil)
        #expect(ConsoleMarkers.printkTime("[   12.5] x") == 12.5)
        #expect(ConsoleMarkers.printkTime("no stamp") == nil)
    }

    @Test("initcall_debug lines are read, named from System.map and ranked; gaps get hints")
    func explain() throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write("ffffffff81aeb8b8 t pty_init\nffffffff81ae6278 t kswapd_init\nffffffff81000000 T _text\n", to: dir + "/System.map")
        let lines = [
            ConsoleLine(time: 0.1, text: "[    0.100000] calling  0xffffffff81aeb8b8 @ 1"),
            ConsoleLine(time: 0.2, text: "[    0.135000] initcall 0xffffffff81aeb8b8 returned 0 after 35000 usecs"),
            ConsoleLine(time: 0.21, text: "[    0.136000] initcall rtc_cmos_init+0x0/0x60 returned 0 after 900 usecs"),
            ConsoleLine(time: 0.22, text: "[    0.137000] initcall 0xffffffff81ae6278 returned 0 after 18000 usecs"),
            ConsoleLine(time: 0.5, text: "[    0.400000] Freeing unused kernel image (initmem) memory: 520K"),
            ConsoleLine(time: 0.6, text: "vmfactory-init: ready 0.41"),
        ]
        let explanation = BootExplainer.explain(lines: lines, cmdline: "x", symbols: BootExplainer.symbols(systemMap: dir + "/System.map"))
        #expect(explanation.slowest.map(\.name) == ["pty_init", "kswapd_init", "rtc_cmos_init"])
        #expect(explanation.initcallMicroseconds == 53900)
        #expect(explanation.slowest.last?.hint?.contains("rtc=on") == true)
        let gap = try #require(explanation.gaps.first)
        #expect(abs(gap.seconds - 0.263) < 1e-9)
        #expect(gap.guestClock)
        #expect(gap.hint?.contains("initrd") == true)
    }

    @Test("report.svg marks its axes at round values inside each panel and draws each kernel's median")
    func chartTicks() throws {
        #expect(ChartLayout.ticks(from: 0.2401, to: 0.2719) == [0.25, 0.26, 0.27])
        #expect(ChartLayout.ticks(from: 0.19, to: 1.61) == [0.5, 1.0, 1.5])
        #expect(ChartLayout.ticks(from: 1.2, to: 1.21) == [1.202, 1.204, 1.206, 1.208])
        for (from, to) in [(0.0123, 0.0129), (0.05, 2.5), (1.2, 1.21)] {
            let ticks = ChartLayout.ticks(from: from, to: to)
            #expect((2...6).contains(ticks.count), "\(from)-\(to): \(ticks)")
            #expect(ticks.allSatisfy { $0 > from && $0 < to })
        }
        #expect(ChartLayout.label(0.25) == "250" && ChartLayout.label(0.0125) == "12.5" && ChartLayout.label(0.00125) == "1.25")
    }

    @Test("statistics agree with values computed by hand")
    func statistics() throws {
        let summary = try #require(Summary([4, 1, 3, 2, 10, 6, 5, 9, 8, 7]))
        #expect(summary.n == 10)
        #expect(summary.min == 1 && summary.max == 10)
        #expect(summary.p50 == 5.5)
        #expect(abs(summary.p90 - 9.1) < 1e-12)
        #expect(summary.mean == 5.5)
        #expect(abs(summary.stddev - 3.0276503540974917) < 1e-12)
        #expect(Summary([]) == nil)
        #expect(Summary([2])?.stddev == 0)
        #expect(Summary.percentile([1, 2, 3, 4], 0.25) == 1.75)

        // Three against three, completely apart. Of the 20 splits, 4 have medians at least as far
        // apart: the two extreme ones and ({1.0, 1.1, 2.0}, {1.2, 2.1, 2.2}) with its mirror.
        let apart = try #require(PermutationTest.compare([1.0, 1.1, 1.2], [2.0, 2.1, 2.2]))
        #expect(apart.exact && apart.permutations == 20)
        #expect(abs(apart.pValue - 0.2) < 1e-12)
        #expect(abs(apart.ratio - 2.1 / 1.1) < 1e-12)
        // The same distribution: no evidence of a difference.
        let same = try #require(PermutationTest.compare([1, 2, 3, 4], [1, 2, 3, 4]))
        #expect(same.pValue == 1)
        // Large samples are resampled from a fixed seed: the same answer every time.
        let a = (0..<40).map { 1.0 + Double($0 % 7) * 0.01 }, b = (0..<40).map { 1.2 + Double($0 % 5) * 0.01 }
        let first = try #require(PermutationTest.compare(a, b)), second = try #require(PermutationTest.compare(a, b))
        #expect(!first.exact && first == second)
        #expect(first.pValue < 0.001)
    }

    @Test("QEMU's messages that leave the guest stopped for good are recognised, and only those")
    func acceleratorMessages() {
        #expect(QEMUMessages.acceleratorFailure(in: "KVM internal error. Suberror: 1") == "KVM internal error. Suberror: 1")
        #expect(QEMUMessages.acceleratorFailure(in: "KVM: entry failed, hardware error 0x80000021") != nil)
        #expect(QEMUMessages.acceleratorFailure(in: "error: kvm run failed Bad address") != nil)
        for other in ["qemu-system-x86_64: terminating on signal 15", "extra data[0]: 0x0000000000000001", "emulation failure", "the guest said KVM internal error"] {
            #expect(QEMUMessages.acceleratorFailure(in: other) == nil, "\(other)")
        }
        let error = QEMUMessages.acceleratorError("KVM internal error. Suberror: 1", stderr: "KVM internal error. Suberror: 1\nemulation failure\n")
        #expect(error.code == .acceleratorFailed)
        #expect(error.hint?.contains("--accel tcg") == true)
        #expect(error.details == ["QEMU said:", "| KVM internal error. Suberror: 1", "| emulation failure"])
    }

    /// A stand-in for QEMU that prints what QEMU 7.2 prints when KVM cannot run the guest, and
    /// then waits for ever as that QEMU does, under the name `qemu-system-x86_64` in a folder of
    /// its own (to put first on PATH).
    static func kvmFailingQEMU(in directory: String) throws -> String {
        let folder = directory + "/qemu"
        try FileStore.createDirectory(folder)
        for name in ["qemu-system-x86_64", "qemu-system-s390x"] {
            try FileManager.default.copyItem(atPath: TestSupport.repositoryRoot + "/Tests/fixtures/qemu-kvm-internal-error.sh", toPath: folder + "/" + name)
        }
        return folder
    }

    /// A command that met the stand-in QEMU: it ended with `status` within `limit` seconds,
    /// said why and what to do, and left no stand-in running in `directory`.
    static func expectStoppedAtOnce(_ stderr: String, status: Int32, expected: Int32, seconds: Double, limit: Double, directory: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(status == expected, "\(stderr)", sourceLocation: sourceLocation)
        #expect(seconds < limit, "took \(seconds) s", sourceLocation: sourceLocation)
        #expect(stderr.contains("KVM stopped the guest at once (QEMU: KVM internal error. Suberror: 1); QEMU was stopped"), "\(stderr)", sourceLocation: sourceLocation)
        #expect(stderr.contains("use --accel tcg"), "\(stderr)", sourceLocation: sourceLocation)
        #expect(((try? TestSupport.processes(matching: directory)) ?? ["?"]).isEmpty, "the stand-in QEMU still runs", sourceLocation: sourceLocation)
    }

    @Test("QEMU saying that KVM stopped the guest ends the run at once: QEMU is stopped and the error says to use TCG", .tags(.integration))
    func kvmInternalError() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let qemu = try Self.kvmFailingQEMU(in: dir) + "/qemu-system-x86_64"
        let started = ContinuousClock.now
        let error = try await #require(throws: VMFactoryError.self) {
            _ = try await TestSupport.bootRunner.run(Command(qemu, ["-M", "microvm", "-accel", "kvm"]), timeout: .seconds(600))
        }
        let seconds = (ContinuousClock.now - started).seconds
        // Far from the timeout, with room for a loaded suite (10.5 s seen while it starts).
        #expect(seconds < 60, "took \(seconds) s: the message was not acted on")
        #expect(error.code == .acceleratorFailed)
        #expect(error.message.contains("KVM stopped the guest at once (QEMU: KVM internal error. Suberror: 1)"), "\(error)")
        #expect(error.hint?.contains("--accel tcg") == true)
        #expect(error.details.contains("| emulation failure"), "\(error.details)")
        #expect(try TestSupport.processes(matching: dir).isEmpty, "the stand-in QEMU still runs")
    }
}

/// Real boots and benchmarks of the built kernels under TCG, through the command line.
@Suite(
    "Booting and benchmarking the built kernels", .tags(.boot), .scoped, .needsPinnedKernel, .needsTool("make"), .needsTool("s390x-linux-gnu-gcc"),
    .needsTool("qemu-system-x86_64"), .needsTool("qemu-system-s390x"), .serialized
)
struct BenchBootTests {
    static func arguments(_ command: String, output: String, _ rest: [String]) -> [String] {
        [command, "--recipe", "container", "--cache-dir", TestSupport.sharedCache, "--output-dir", output] + rest
    }

    @Test("vmfactory boot streams the console and exits with the guest's exit code; --print-qemu prints the command", arguments: Target.allCases)
    func boot(_ target: Target) async throws {
        let built = try await SharedBuild.shared.get()
        let run = try await TestSupport.runCLI(Self.arguments("boot", output: built.output, ["--target", target.rawValue, "--accel", "auto", "--timeout", TestSupport.bootTimeout, "--", "/init", "--explain"]))
        #expect(run.status == 0, "\(run.stderr)")
        let lines = run.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("vmfactory-init: ready ") == true, "\(run.stdout)")
        #expect(lines.contains("hostname: vmfactory"))
        #expect(lines.last == "vmfactory-init: exit 0")
        // auto takes KVM where a probe boot works, else TCG with a note that says why.
        if target == .s390x {
            #expect(run.stderr.contains("booting container/s390x under TCG") && run.stderr.contains("s390x guests run under TCG"), "\(run.stderr)")
        } else {
            let kvm = run.stderr.contains("booting container/x86_64 under KVM")
            let explainedTCG = run.stderr.contains("booting container/x86_64 under TCG")
                && (run.stderr.contains("KVM is not available") || run.stderr.contains("KVM did not boot a guest on this host"))
            #expect(kvm || explainedTCG, "\(run.stderr)")
        }

        let printed = try await TestSupport.runCLI(Self.arguments("boot", output: built.output, ["--target", target.rawValue, "--accel", "tcg", "--print-qemu", "--append", "loglevel=3"]))
        #expect(printed.status == 0)
        #expect(printed.stdout.hasPrefix(target.qemuSystem + " -M "))
        #expect(printed.stdout.contains("loglevel=3"))
    }

    @Test("the workload's exit code becomes vmfactory boot's, on both targets")
    func exitCodes() async throws {
        let built = try await SharedBuild.shared.get()
        for target in Target.allCases {
            let run = try await TestSupport.runCLI(Self.arguments("boot", output: built.output, ["--target", target.rawValue, "--accel", "tcg", "--timeout", TestSupport.bootTimeout, "--", "/bin/nope"]))
            #expect(run.status == 127, "\(target): \(run.stderr)")
            #expect(run.stdout.contains("vmfactory-init: cannot run /bin/nope: No such file or directory"))
        }
    }

    @Test("a bench of 3 runs per target writes reports that parse and hold every raw sample", arguments: Target.allCases)
    func bench(_ target: Target) async throws {
        let built = try await SharedBuild.shared.get()
        let dir = try TestSupport.temporaryDirectory()
        try FileManager.default.copyItem(atPath: built.output + "/container", toPath: dir + "/container")
        let run = try await TestSupport.runCLI(Self.arguments("bench", output: dir, ["--target", target.rawValue, "--runs", "3", "--warmup", "1", "--accel", "tcg", "--format", "json"]))
        #expect(run.status == 0, "\(run.stderr)")
        let printed = try JSONDecoder().decode(BenchReport.self, from: Data(run.stdout.utf8))
        let folder = dir + "/container/\(target)/bench"
        let report = try JSONDecoder().decode(BenchReport.self, from: Data(contentsOf: URL(fileURLWithPath: folder + "/report.json")))
        #expect(report.samples == printed.samples)
        #expect(report.samples.count == 4)
        #expect(report.samples.filter(\.warmup).count == 1)
        #expect(report.samples.allSatisfy { $0.ok && $0.phases.marker != nil && $0.phases.exit != nil && $0.phases.guestReady != nil })
        #expect(report.samples.allSatisfy { $0.console.contains { $0.text.hasPrefix("vmfactory-init: ready") } })
        let summary = try #require(report.summaries.first?.phases["marker"])
        #expect(summary.n == 3)
        // Three values: the median is the middle one, the mean their sum over three.
        let measured = report.samples.filter { !$0.warmup }.compactMap(\.phases.marker).sorted()
        #expect(measured.count == 3)
        #expect(summary.p50 == measured[1])
        #expect(abs(summary.mean - (measured[0] + measured[1] + measured[2]) / 3) < 1e-12)
        #expect(summary.min == measured[0] && summary.max == measured[2])
        #expect(report.environment.accelerator == .tcg)
        #expect(report.environment.qemu.contains("QEMU emulator version"))
        #expect(report.candidates.first?.kernelSHA256 == built.results.first { $0.target == target }?.manifest.artifacts.first { $0.kind != nil }?.sha256)

        let markdown = try String(contentsOfFile: folder + "/report.md", encoding: .utf8)
        #expect(markdown.contains("## spawn → ready line"))
        #expect(markdown.contains("| container | 3 |"))
        let svg = try Data(contentsOf: URL(fileURLWithPath: folder + "/report.svg"))
        let parser = XMLParser(data: svg)
        #expect(parser.parse(), "report.svg is not well-formed XML")
        #expect(String(decoding: svg, as: UTF8.self).contains("<polyline"))
    }

    @Test("a kernel that never reaches the marker fails within the timeout, shows the console, and leaves no QEMU")
    func neverReady() async throws {
        let built = try await SharedBuild.shared.get()
        let dir = try TestSupport.temporaryDirectory()
        // An initrd without an init: the kernel panics, and with panic=0 waits there forever.
        try ArchiveWriter.write([ArchiveWriter.Entry(path: "dev", kind: .directory, mode: 0o755)], to: dir + "/empty.cpio", format: .cpioNewc)
        let started = ContinuousClock.now
        let run = try await TestSupport.runCLI(Self.arguments("boot", output: built.output, [
            "--target", "x86_64", "--accel", "tcg", "--timeout", "6s", "--initrd", dir + "/empty.cpio", "--append", "panic=0",
        ]))
        let seconds = (ContinuousClock.now - started).seconds
        #expect(run.status == 1)
        // The --timeout ended it, not the default one: room for a loaded suite, far below 600 s.
        #expect(seconds < 6 + 30, "took \(seconds) s")
        #expect(run.stderr.contains("did not finish within 6.0s and never printed 'vmfactory-init: ready'"), "\(run.stderr)")
        #expect(run.stderr.contains("last console lines:"))
        #expect(run.stdout.contains("Kernel panic"))
        let left = try await TestSupport.run("pgrep", ["-f", dir + "/empty.cpio"])
        #expect(left.output.isEmpty, "QEMU still runs: \(left.output)")

        // In a benchmark the same boot is recorded as failed, never dropped.
        try FileManager.default.copyItem(atPath: built.output + "/container", toPath: dir + "/outputs/container")
        let bench = try await TestSupport.runCLI(Self.arguments("bench", output: dir + "/outputs", [
            "--target", "x86_64", "--accel", "tcg", "--runs", "1", "--warmup", "0", "--timeout", "4s", "--initrd", dir + "/empty.cpio", "--append", "panic=0",
        ]))
        #expect(bench.status == 1)
        #expect(bench.stderr.contains("1 of 1 measured boots failed"))
        let report = try JSONDecoder().decode(BenchReport.self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/outputs/container/x86_64/bench/report.json")))
        #expect(report.samples.count == 1)
        #expect(report.samples.first?.ok == false)
        #expect(report.samples.first?.failure?.contains("timed out") == true)
        #expect(report.summaries.first?.failed == 1)
    }

    @Test("QEMU refusing to start is reported with its own message")
    func qemuFails() async throws {
        let built = try await SharedBuild.shared.get()
        let run = try await TestSupport.runCLI(Self.arguments("boot", output: built.output, ["--target", "x86_64", "--accel", "tcg", "--memory", "99999999G"]))
        #expect(run.status == 1)
        #expect(run.stderr.contains("QEMU ended with status"), "\(run.stderr)")
        #expect(run.stderr.contains("QEMU said:"))
    }

    @Test("vmfactory boot --accel kvm on a host whose KVM stops the guest fails at once, says to use --accel tcg, and leaves no QEMU")
    func kvmFailsAtOnce() async throws {
        let built = try await SharedBuild.shared.get()
        let dir = try TestSupport.temporaryDirectory()
        let fake = try BootBenchUnitTests.kvmFailingQEMU(in: dir)
        let started = ContinuousClock.now
        let run = try await TestSupport.runCLI(
            Self.arguments("boot", output: built.output, ["--target", "x86_64", "--accel", "kvm", "--timeout", "600s"]),
            environment: ["PATH": fake + ":" + (TestSupport.environment["PATH"] ?? "/usr/bin:/bin")]
        )
        BootBenchUnitTests.expectStoppedAtOnce(run.stderr, status: run.status, expected: 1, seconds: (ContinuousClock.now - started).seconds, limit: 60, directory: dir)
    }

    /// The limits in Tests/budgets/boot.json.
    struct Budget: Decodable {
        var preset: RuntimeCmdline
        var readySeconds: [String: Double]
    }

    @Test("with another runtime's plain command line, the guest reaches the ready line within the budget kept in Tests/budgets/boot.json (icount: deterministic)", arguments: Target.allCases)
    func bootBudget(_ target: Target) async throws {
        let budget = try JSONDecoder().decode(Budget.self, from: FileStore.readData(TestSupport.repositoryRoot + "/Tests/budgets/boot.json"))
        let limit = try #require(budget.readySeconds[target.rawValue])
        let built = try await SharedBuild.shared.get()
        let dir = try TestSupport.temporaryDirectory()
        try FileManager.default.copyItem(atPath: built.output + "/container", toPath: dir + "/container")
        let run = await TestSupport.runCommand(Self.arguments("bench", output: dir, [
            "--target", target.rawValue, "--icount", "--runs", "1", "--warmup", "0", "--cmdline-preset", budget.preset.rawValue, "--format", "json",
        ]), runner: TestSupport.runner)
        #expect(run.status == 0, "\(run.stderr)")
        let report = try JSONDecoder().decode(BenchReport.self, from: Data(run.stdout.utf8))
        #expect(report.candidates.first?.cmdline.hasPrefix(try #require(budget.preset.cmdline(for: target))) == true)
        let ready = try #require(report.samples.first?.phases.guestReady, "no ready line: \(report.samples.first?.console.map(\.text) ?? [])")
        #expect(ready <= limit, "\(target): \(ready) s of guest time to the ready line, the budget is \(limit) s")
    }
}
