import Foundation
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryCommands
@testable import VMFactoryCore
@testable import VMFactoryLifecycle
@testable import VMFactoryBoot
@testable import VMFactoryKernel
@testable import VMFactoryRun

/// The pieces of long-lived runs that need no VM: the protocol's version in its three places,
/// settings text both ways, records, names, logs, an exec's settings over the run's.
@Suite("Long-lived runs: values", .tags(.unit), .scoped)
struct LifecycleTests {
    @Test("the run protocol's version is one number: the init's header, the manifest's and the host's")
    func oneVersion() throws {
        let header = try FileStore.readText(TestSupport.repositoryRoot + "/Sources/guest-init/protocol.h")
        let defined = header.split(separator: "\n").first { $0.hasPrefix("#define VMF_PROTOCOL_VERSION ") }
        #expect(defined == "#define VMF_PROTOCOL_VERSION \(RunProtocol.version)")
        #expect(InitCompiler.runProtocol == Int(RunProtocol.version))
    }

    @Test("settings text and back: line breaks, backslashes and a value ending in a carriage return; bad escapes refused")
    func keyValues() {
        let pairs = [("arg", "a\\b"), ("env", "X=1\n2"), ("env", "CR=\r"), ("arg", "")]
        let text = RunProtocol.keyValueText(pairs)
        let back = RunProtocol.keyValuePairs(text)
        #expect(back?.map(\.0) == pairs.map(\.0) && back?.map(\.1) == pairs.map(\.1))
        #expect(RunProtocol.keyValuePairs("arg=x\\q\n") == nil)
        #expect(RunProtocol.keyValuePairs("arg=x\\") == nil)
        #expect(RunProtocol.keyValuePairs("no equals\n") == nil)
    }

    @Test("names: docker's rule, one run each, released only by their run")
    func names() throws {
        let cache = try TestSupport.temporaryDirectory()
        let folders = RunFolders(cacheDirectory: cache)
        let registry = RunRegistry(folders: folders)
        for good in ["web", "a.b_c-1", "9lives"] { #expect(RunRegistry.isValidName(good), "\(good)") }
        for bad in ["", "-x", ".x", "a b", "a/b", "ä", String(repeating: "x", count: 129)] { #expect(!RunRegistry.isValidName(bad), "\(bad)") }
        // Names of runs whose folders exist; a name whose run's folder is gone is free again.
        for id in ["aaaaaaaaaaaa", "bbbbbbbbbbbb"] { try FileStore.createDirectory(folders.root + "/" + id) }
        try registry.reserve(name: "web", id: "aaaaaaaaaaaa")
        #expect(throws: VMFactoryError.self) { try registry.reserve(name: "web", id: "bbbbbbbbbbbb") }
        registry.release(name: "web", id: "bbbbbbbbbbbb")
        #expect(throws: VMFactoryError.self) { try registry.reserve(name: "web", id: "bbbbbbbbbbbb") }
        registry.release(name: "web", id: "aaaaaaaaaaaa")
        try registry.reserve(name: "web", id: "bbbbbbbbbbbb")
        try FileManager.default.removeItem(atPath: folders.root + "/bbbbbbbbbbbb")
        try registry.reserve(name: "web", id: "cccccccccccc")
    }

    static func record(_ id: String, name: String? = nil, status: RunRecord.Status = .running) -> RunRecord {
        RunRecord(
            id: id, name: name, image: "oci:/x", command: ["/bin/sh"], target: "x86_64", created: Date(), status: status,
            ports: [], pid: 4242, controlSocket: "/nowhere/control.sock", detached: true, user: "", workdir: "/", environment: []
        )
    }

    @Test("runs are found by id, a unique start of one, or name; a run whose supervisor is gone is recorded as killed, 137")
    func finding() throws {
        let cache = try TestSupport.temporaryDirectory()
        let folders = RunFolders(cacheDirectory: cache)
        let registry = RunRegistry(folders: folders)
        for (id, name) in [("abc111111111", "one"), ("abc222222222", nil)] {
            try FileStore.createDirectory(folders.root + "/" + id)
            try Self.record(id, name: name).write(folder: folders.root + "/" + id)
            try FileStore.writeAtomically("", to: folders.root + "/" + id + "/" + RunFolders.lockName)
            if let name { try registry.reserve(name: name, id: id) }
        }
        #expect(try registry.find("one").record.id == "abc111111111")
        #expect(try registry.find("abc2").record.id == "abc222222222")
        #expect(throws: VMFactoryError.self) { try registry.find("abc") }
        #expect(throws: VMFactoryError.self) { try registry.find("zzz") }
        // Nobody holds the locks: both supervisors are gone.
        let found = try registry.find("abc1")
        #expect(!found.alive && found.record.status == .exited && found.record.exitCode == 137)
        #expect(found.record.message?.contains("its supervisor (pid 4242) was killed") == true)
        #expect(try RunRecord.read(folder: found.path).exitCode == 137, "written down for the next reader")
        #expect(found.record.statusText().hasPrefix("Exited (137) "))
        try registry.remove(found)
        #expect(!FileStore.exists(found.path))
        #expect(throws: VMFactoryError.self) { try registry.find("one") }
        #expect(registry.list().map(\.record.id) == ["abc222222222"])
    }

    @Test("the log keeps each stream's bytes in order, rotates once past its limit, and a follower reads across the rotation")
    func log() throws {
        let folder = try TestSupport.temporaryDirectory()
        let log = RunLog(folder: folder, limit: 100)
        var reader = RunLog.Reader(folder: folder)
        log.append(.stdout, Data("one\n".utf8))
        log.append(.stderr, Data("err\n".utf8))
        let first = reader.read()
        #expect(first.map(\.0) == [.stdout, .stderr] && first.map(\.1) == [Data("one\n".utf8), Data("err\n".utf8)])
        // A follower that keeps up (reads between writes) loses nothing across rotations.
        var more: [(RunLog.Stream, Data)] = []
        for index in 0..<10 {
            log.append(.stdout, Data("line \(index) of some length\n".utf8))
            more += reader.read()
        }
        #expect(more.map { String(decoding: $0.1, as: UTF8.self) } == (0..<10).map { "line \($0) of some length\n" }, "nothing lost across rotations")
        // A reader from the start gets what is kept: the last one or two files' worth.
        var late = RunLog.Reader(folder: folder)
        let kept = late.read().map { String(decoding: $0.1, as: UTF8.self) }
        #expect(!kept.isEmpty && kept.last == "line 9 of some length\n" && kept.count < 10, "\(kept)")
        #expect(FileStore.exists(folder + "/output.log.1"))
        let total = (FileStore.fileSize(folder + "/output.log") ?? 0) + (FileStore.fileSize(folder + "/output.log.1") ?? 0)
        #expect(total <= 200, "at most twice the limit on disk")
    }

    @Test("an exec's settings: the run's user, folder and environment unless it says otherwise, its -e over the run's")
    func execSettings() throws {
        let process = ContainerProcess(argv: ["/bin/sh"], environment: ["PATH=/bin", "A=run", "B=run"], user: "app", workdir: "/srv", stopSignal: SIGTERM)
        let merged = RunControl.execSettings(RunProtocol.keyValueText([("arg", "env"), ("env", "B=exec"), ("env", "C=new"), ("stdin", "1")]), process: process)
        #expect(merged == RunProtocol.keyValueText([
            ("arg", "env"), ("env", "PATH=/bin"), ("env", "A=run"), ("env", "B=exec"), ("env", "C=new"), ("user", "app"), ("workdir", "/srv"), ("stdin", "1"),
        ]))
        let own = RunControl.execSettings(RunProtocol.keyValueText([("arg", "id"), ("user", "0"), ("workdir", "/tmp")]), process: process)
        #expect(own?.contains("user=0\n") == true && own?.contains("workdir=/tmp\n") == true)
        #expect(RunControl.execSettings("user=0\n", process: process) == nil, "no command")
    }

    @Test("cp's receiving side: a guest's stream with .., an absolute name, a link out, a file through a link, a device or another top is refused, and nothing lands outside the target", .tags(.integration))
    func hostileCopies() throws {
        let dir = try TestSupport.temporaryDirectory()
        let cases: [(String, [ArchiveWriter.Entry])] = [
            ("dotdot", [.init(path: "report/", kind: .directory, mode: 0o755), .init(path: "report/../../escaped", kind: .file(Data("x".utf8)))]),
            ("absolute", [.init(path: "/tmp/escaped", kind: .file(Data("x".utf8)))]),
            ("link out", [.init(path: "report/", kind: .directory, mode: 0o755), .init(path: "report/up", kind: .symlink("../../.."))]),
            ("through a link", [.init(path: "report/", kind: .directory, mode: 0o755), .init(path: "report/in", kind: .symlink(".")), .init(path: "report/in/../../escaped", kind: .file(Data("x".utf8)))]),
            ("device", [.init(path: "report/", kind: .directory, mode: 0o755), .init(path: "report/null", kind: .characterDevice(major: 1, minor: 3))]),
            ("hard link out", [.init(path: "report/", kind: .directory, mode: 0o755), .init(path: "report/passwd", kind: .hardlink("../../etc/passwd"))]),
            // Each link stays inside by its text; together they climb out ("s1/.." from where s1 leads).
            ("a chain of links", [.init(path: "report/", kind: .directory, mode: 0o755), .init(path: "report/s1", kind: .symlink(".")), .init(path: "report/up", kind: .symlink("s1/.."))]),
        ]
        for (name, entries) in cases {
            let folder = dir + "/" + name.replacingOccurrences(of: " ", with: "-")
            try FileStore.createDirectory(folder + "/target")
            try ArchiveWriter.write(entries, to: folder + "/stream.tar", format: .paxTar)
            #expect(throws: VMFactoryError.self, "\(name)") { try Cp.receive(folder + "/stream.tar", path: "/out/report", target: folder + "/target", owners: false) }
            #expect(throws: VMFactoryError.self, "\(name), its contents") { try Cp.receive(folder + "/stream.tar", path: "/out/report/.", target: folder + "/target", owners: false) }
            #expect(try FileManager.default.contentsOfDirectory(atPath: folder).sorted() == ["stream.tar", "target"], "\(name): nothing beside the target")
            #expect(try FileManager.default.contentsOfDirectory(atPath: folder + "/target").isEmpty, "\(name): nothing in it either")
        }
        #expect(!FileStore.exists(dir + "/escaped") && !FileStore.exists("/tmp/escaped"))
        // The top a link: its contents are not copied through it; copied itself, it is a link to its own folder.
        let linked = dir + "/linked"
        try FileStore.createDirectory(linked + "/target")
        try ArchiveWriter.write([.init(path: "report", kind: .symlink("."))], to: linked + "/stream.tar", format: .paxTar)
        #expect(throws: VMFactoryError.self) { try Cp.receive(linked + "/stream.tar", path: "/out/report/.", target: linked + "/target", owners: false) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: linked + "/target").isEmpty)
        // Another name than the one asked for: nothing placed.
        let other = dir + "/other"
        try FileStore.createDirectory(other + "/target")
        try ArchiveWriter.write([.init(path: "elsewhere", kind: .file(Data("x".utf8)))], to: other + "/stream.tar", format: .paxTar)
        #expect(throws: VMFactoryError.self) { try Cp.receive(other + "/stream.tar", path: "/out/report", target: other + "/target", owners: false) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: other + "/target").isEmpty)
        // A good one lands as docker cp places it: into a folder that exists, or as a new name.
        try ArchiveWriter.write([.init(path: "report", kind: .file(Data("ok".utf8)))], to: other + "/good.tar", format: .paxTar)
        try Cp.receive(other + "/good.tar", path: "/out/report", target: other + "/target", owners: false)
        try Cp.receive(other + "/good.tar", path: "/out/report", target: other + "/renamed", owners: false)
        #expect(try FileStore.readText(other + "/target/report") == "ok" && FileStore.readText(other + "/renamed") == "ok")
    }

    @Test("how a run ends is one pure decision: the guest's failure, then the exit report (with the OOM message), then isa-debug-exit, then vmfactory's own ending, then QEMU's")
    func verdicts() throws {
        let plan = try RunTests.plan(.x86_64)
        func decide(_ events: RunVerdict.Events, said: String = "", console: [String] = []) -> (Int32, String?) {
            let verdict = RunVerdict.decide(events, plan: plan, stopGrace: .seconds(10), qemuSaid: said, consoleTail: console, consoleLog: "/run/console.log", keep: false)
            return (verdict.exitCode, verdict.message)
        }
        let exited = RunProtocol.ExitReport(Array("code=3 signal=0 out=0 err=0 oom=0".utf8))
        let oom = RunProtocol.ExitReport(Array("code=137 signal=9 out=0 err=0 oom=1".utf8))
        var events = RunVerdict.Events(ending: nil, exit: exited, failure: nil, started: true, connected: true, termination: .exited(7))
        #expect(decide(events) == (3, nil), "the command's own status, whatever QEMU's")
        events.ending = .timedOut
        #expect(decide(events) == (3, nil), "an exit already reported wins over a timeout that came later")
        events.failure = RunVerdict.Failure(code: 125, message: "the guest broke the run protocol")
        #expect(decide(events) == (125, "the guest broke the run protocol"), "the guest's failure first")
        events = RunVerdict.Events(ending: nil, exit: oom, failure: nil, started: true, connected: true, termination: .exited(0))
        #expect(decide(events).0 == 137 && decide(events).1?.contains("OOM killer ended the command (--memory 512m)") == true)
        // No exit report: the init's code through isa-debug-exit (x86_64).
        events = RunVerdict.Events(ending: nil, exit: nil, failure: nil, started: false, connected: true, termination: .exited(QEMUMachine.debugExitStatus(forCode: 125)))
        #expect(decide(events).0 == 125 && decide(events).1?.contains("before the command started") == true)
        for (ending, code) in [(RunStateMachine.Ending.timedOut, Int32(124)), (.stopKilled, 137), (.interrupted, 130), (.removed, 137)] {
            events = RunVerdict.Events(ending: ending, exit: nil, failure: nil, started: true, connected: true, termination: .signaled(9))
            #expect(decide(events).0 == code, "\(ending)")
        }
        events = RunVerdict.Events(ending: nil, exit: nil, failure: nil, started: true, connected: true, termination: .signaled(9))
        let died = decide(events, said: "qemu: something\n", console: ["last line"])
        #expect(died.0 == 125)
        #expect(died.1 == "the VM ended (QEMU signal 9) before the command finished\nQEMU said:\n  | qemu: something\nlast console lines:\n  | last line\nrun again with --console to see the guest's console, or --keep to keep its log")
    }

    @Test("a run's state machine: hello, start and exit move it; stops, kills, timeouts and rm -f give the actions and the status they should, in any order")
    func stateMachine() throws {
        let plan = try RunTests.plan(.x86_64)
        let exited = try #require(RunProtocol.ExitReport(Array("code=3 signal=0 out=0 err=0 oom=0".utf8)))
        func status(_ machine: RunStateMachine) -> Int32 {
            RunVerdict.decide(machine.events, plan: plan, stopGrace: .seconds(10), qemuSaid: "", consoleTail: [], consoleLog: "", keep: false).exitCode
        }

        // The plain life: settings at the hello, started once, the command's status.
        var machine = RunStateMachine(version: 1, stopGrace: .seconds(10), tty: false)
        #expect(machine.phase == .preparing)
        #expect(machine.handle(.spawned).isEmpty && machine.phase == .booting)
        #expect(machine.handle(.hello(1)) == [.sendSettings])
        #expect(machine.handle(.hello(1)).isEmpty, "a second hello gets nothing")
        #expect(machine.handle(.started) == [.reportStarted] && machine.phase == .running)
        #expect(machine.handle(.started).isEmpty, "started is reported once")
        #expect(machine.handle(.signal(SIGWINCH)).isEmpty, "no terminal, no window size")
        #expect(machine.handle(.signal(SIGHUP)) == [.sendSignal(SIGHUP)])
        #expect(machine.handle(.kill(SIGUSR1)) == [.sendSignal(SIGUSR1)])
        #expect(machine.handle(.exited(exited)).isEmpty && machine.phase == .stopping)
        // A timeout after the exit report waits for the guest's last output, then ends it.
        #expect(machine.handle(.timedOut) == [.startDrainTimer(.timedOut, RunStateMachine.drainAfterExit)])
        #expect(machine.handle(.timedOut).isEmpty, "one drain timer")
        #expect(machine.handle(.drainOver(.timedOut)) == [.endVM])
        #expect(machine.handle(.vmExited(.signaled(SIGTERM))).isEmpty && machine.phase == .exited)
        #expect(machine.handle(.signal(SIGTERM)).isEmpty && machine.handle(.remove).isEmpty, "nothing after the end")
        #expect(status(machine) == 3, "the exit report wins over the timeout that came after it")

        // Another version at the hello: refused, named, the VM ended.
        machine = RunStateMachine(version: 1, stopGrace: .seconds(10), tty: true)
        _ = machine.handle(.spawned)
        #expect(machine.handle(.hello(2)) == [.endVM])
        #expect(machine.failure?.message.contains("version 2, and this vmfactory speaks version 1") == true)
        _ = machine.handle(.vmExited(.signaled(SIGTERM)))
        #expect(status(machine) == 125)
        machine = RunStateMachine(version: 1, stopGrace: .seconds(10), tty: true)
        #expect(machine.handle(.hello(nil)) == [.endVM], "a hello without a version")

        // Ctrl-C: the stop signal and its timer; a second one ends the VM at once.
        machine = RunStateMachine(version: 1, stopGrace: .seconds(7), tty: true)
        _ = machine.handle(.spawned)
        _ = machine.handle(.started)
        #expect(machine.handle(.signal(SIGWINCH)) == [.sendWindowSize])
        let first = machine.handle(.signal(SIGINT))
        #expect(first.dropFirst() == [.startStopTimer(.seconds(7)), .sendSignal(SIGTERM)] && machine.phase == .stopping)
        guard case .say(let said) = first.first else { Issue.record("no word to the user: \(first)"); return }
        #expect(said.contains("ends in \(Elapsed.format(.seconds(7)))"), "\(said)")
        #expect(machine.handle(.signal(SIGTERM)) == [.endVM])
        #expect(machine.handle(.stopGraceOver).isEmpty, "already ending")
        _ = machine.handle(.vmExited(.signaled(SIGTERM)))
        #expect(status(machine) == 137)

        // stop -t: the grace runs out.
        machine = RunStateMachine(version: 1, stopGrace: .seconds(10), tty: false)
        _ = machine.handle(.spawned)
        _ = machine.handle(.started)
        #expect(machine.handle(.stop(grace: .seconds(2))) == [.startStopTimer(.seconds(2)), .sendSignal(SIGTERM)])
        #expect(machine.handle(.stopGraceOver) == [.endVM])
        _ = machine.handle(.vmExited(.signaled(SIGTERM)))
        #expect(status(machine) == 137)

        // rm -f ends the VM even after the exit report; the report still decides.
        machine = RunStateMachine(version: 1, stopGrace: .seconds(10), tty: false)
        _ = machine.handle(.spawned)
        _ = machine.handle(.started)
        _ = machine.handle(.exited(exited))
        #expect(machine.handle(.remove) == [.endVM])
        _ = machine.handle(.vmExited(.signaled(SIGTERM)))
        #expect(status(machine) == 3)

        // The guest breaks the protocol while running; its failure wins over QEMU's end.
        machine = RunStateMachine(version: 1, stopGrace: .seconds(10), tty: false)
        _ = machine.handle(.spawned)
        _ = machine.handle(.started)
        #expect(machine.handle(.protocolBroken("the guest broke the run protocol (x)")) == [.endVM])
        #expect(machine.handle(.guestFailed(code: 126, message: "later")).isEmpty)
        _ = machine.handle(.vmExited(.exited(0)))
        #expect(status(machine) == 125 && machine.failure?.message == "the guest broke the run protocol (x)")

        // The OCI runtime's create: the settings wait for start; a stop before it ends the VM.
        machine = RunStateMachine(version: 1, stopGrace: .seconds(10), tty: false, waitsForStart: true)
        _ = machine.handle(.spawned)
        #expect(machine.handle(.hello(1)) == [.reportBooted], "booted, the settings held")
        #expect(machine.handle(.start) == [.sendSettings])
        #expect(machine.handle(.start).isEmpty, "once")
        machine = RunStateMachine(version: 1, stopGrace: .seconds(10), tty: false, waitsForStart: true)
        _ = machine.handle(.spawned)
        #expect(machine.handle(.start).isEmpty, "a start before the hello waits for it")
        #expect(machine.handle(.hello(1)) == [.sendSettings])
        machine = RunStateMachine(version: 1, stopGrace: .seconds(10), tty: false, waitsForStart: true)
        _ = machine.handle(.spawned)
        _ = machine.handle(.hello(1))
        #expect(machine.handle(.signal(SIGTERM)).contains(.endVM), "nothing to stop before start")
        _ = machine.handle(.vmExited(.signaled(SIGTERM)))
        #expect(status(machine) == 130)

        // Before the start: the guest's own failure (126, cannot invoke), an accelerator's,
        // a cancellation.
        machine = RunStateMachine(version: 1, stopGrace: .seconds(10), tty: false)
        _ = machine.handle(.spawned)
        #expect(machine.handle(.guestFailed(code: 126, message: "cannot run /x")).isEmpty)
        _ = machine.handle(.vmExited(.exited(0)))
        #expect(status(machine) == 126)
        for (event, code) in [(RunStateMachine.Event.cancelled, Int32(130)), (.timedOut, 124), (.acceleratorFailed("KVM internal error. Suberror: 1"), 125)] {
            machine = RunStateMachine(version: 1, stopGrace: .seconds(10), tty: false)
            _ = machine.handle(.spawned)
            #expect(machine.handle(event) == [.endVM] && machine.phase == .stopping)
            _ = machine.handle(.vmExited(.signaled(SIGTERM)))
            #expect(status(machine) == code, "\(event)")
        }
    }
}
