import Foundation
import Testing
@testable import VMFactoryCore
@testable import VMFactoryLifecycle
@testable import VMFactoryRun

/// Templates without a VM: the key, the store, and the state machine's hold of the settings.
@Suite("Templates: keys, the store and the settings held while one is saved", .tags(.unit), .scoped)
struct RunTemplatesTests {
    /// A plan whose kernel and initrd are real files (the key reads their identity), with a
    /// QEMU on `bin` (a file the key reads the identity of, never run).
    static func plan(in dir: String) throws -> RunPlan {
        try FileStore.createDirectory(dir + "/bin")
        try TestSupport.write("#!/bin/false\n", to: dir + "/bin/qemu-system-x86_64", mode: 0o755)
        try TestSupport.write("kernel", to: dir + "/vmlinux")
        try TestSupport.write("initrd", to: dir + "/initrd.cpio")
        var plan = try RunTests.plan(.x86_64)
        plan.kernel = dir + "/vmlinux"
        plan.initrd = dir + "/initrd.cpio"
        plan.volumes = []
        return plan
    }

    /// The QEMU command as a run spawns it: its descriptors numbered from `base`.
    static func command(_ plan: RunPlan, base: Int32, folder: String) -> Command {
        var files = RunPlan.Files(overlay: folder + "/disk.qcow2", sockets: folder + "/sockets")
        var inherited = RunPlan.Inherited(kernel: base, initrd: base + 1, overlay: base + 2, backing: base + 3)
        inherited.channel = base + 4
        inherited.monitor = base + 5
        inherited.network = base + 6
        files.inherited = inherited
        return plan.qemu(files)
    }


    @Test("the key leaves out the run's descriptors and name, and changes with memory, devices, the initrd's file and, for a read-only disk, its size")
    func keys() throws {
        let dir = try TestSupport.temporaryDirectory()
        let plan = try Self.plan(in: dir)
        let one = try #require(RunTemplates.key(plan: plan, command: Self.command(plan, base: 10, folder: "/cache/runs/aaa"), diskSize: 1 << 28, environment: ["PATH": dir + "/bin"]))
        let two = try #require(RunTemplates.key(plan: plan, command: Self.command(plan, base: 37, folder: "/cache/runs/bbb"), diskSize: 1 << 29, environment: ["PATH": dir + "/bin"]))
        #expect(one == two, "another run of the same machine, with a disk of another size:\n\(one.text)\n\(two.text)")
        #expect(!one.text.contains("/cache/runs") && one.text.contains("/proc/self/fd/N") && one.text.contains("fd=N"), "\(one.text)")
        #expect(one.text.contains("qemu \(FileStore.realPath(dir + "/bin/qemu-system-x86_64") ?? "?") dev="), "the QEMU binary by its resolved path: \(one.text)")

        var bigger = plan
        bigger.memoryMiB = 1024
        var volume = plan
        volume.volumes = [Volume(host: "/srv/a", guest: "/data", readOnly: false, kind: .ninep)]
        var silent = plan
        silent.network = .none
        var readOnly = plan
        readOnly.readOnly = true
        var keys = [one]
        for changed in [bigger, volume, silent, readOnly] {
            keys.append(try #require(RunTemplates.key(plan: changed, command: Self.command(changed, base: 10, folder: "/c"), diskSize: 1 << 28, environment: ["PATH": dir + "/bin"])))
        }
        #expect(Set(keys.map(\.digest)).count == keys.count, "memory, a volume, no network and a read-only disk are other machines")
        let readOnlyLarger = try #require(RunTemplates.key(plan: readOnly, command: Self.command(readOnly, base: 10, folder: "/c"), diskSize: 1 << 29, environment: ["PATH": dir + "/bin"]))
        #expect(readOnlyLarger != keys[4], "a read-only disk's size is in its key")

        // A rebuilt initrd is another file: a new one renamed over the old.
        try TestSupport.write("initrd", to: dir + "/initrd.new")
        #expect(rename(dir + "/initrd.new", dir + "/initrd.cpio") == 0)
        let rebuilt = try #require(RunTemplates.key(plan: plan, command: Self.command(plan, base: 10, folder: "/c"), diskSize: 1 << 28, environment: ["PATH": dir + "/bin"]))
        #expect(rebuilt != one)
        var missing = plan
        missing.kernel = dir + "/no-such-kernel"
        #expect(RunTemplates.key(plan: missing, command: Self.command(missing, base: 10, folder: "/c"), diskSize: nil, environment: ["PATH": dir + "/bin"]) == nil)
    }

    @Test("shape: -name's value and descriptor numbers go, everything else stays")
    func shape() {
        let shaped = RunTemplates.shape(of: ["-name", "vmfactory-run:/x", "-kernel", "/proc/self/fd/12", "-chardev", "socket,id=c,fd=7", "-fsdev", "proxy,id=f,sock_fd=19", "-netdev", "stream,addr.type=fd,addr.str=23", "-m", "512M"])
        #expect(shaped == ["-kernel", "/proc/self/fd/N", "-chardev", "socket,id=c,fd=N", "-fsdev", "proxy,id=f,sock_fd=N", "-netdev", "stream,addr.type=fd,addr.str=N", "-m", "512M"])
    }

    @Test("virtio-fs and an engine's network namespace boot cold, 9p does not")
    func eligibility() throws {
        let dir = try TestSupport.temporaryDirectory()
        var plan = try Self.plan(in: dir)
        #expect(RunTemplates.ineligibility(of: plan) == nil)
        plan.volumes = [Volume(host: "/srv/a", guest: "/data", readOnly: false, kind: .ninep)]
        #expect(RunTemplates.ineligibility(of: plan) == nil)
        plan.volumes.append(Volume(host: "/srv/b", guest: "/b", readOnly: false, kind: .virtiofs))
        #expect(RunTemplates.ineligibility(of: plan)?.contains("vhost-user-fs") == true)
    }

    @Test("one maker at a time; a committed template is found; a changed state is refused and removed; an abandoned one leaves nothing")
    func store() throws {
        let dir = try TestSupport.temporaryDirectory()
        let plan = try Self.plan(in: dir)
        let templates = RunTemplates(cacheDirectory: dir + "/cache")
        let key = RunTemplates.Key(text: "a machine\n")
        let console = Console.recording()
        #expect(templates.find(key, console: console) == nil)
        let maker = try #require(try templates.startMaking(key))
        #expect(try templates.startMaking(key) == nil, "a second maker of the same key")
        #expect(write(maker.state, "saved state", 11) == 11)
        try maker.commit(plan: plan, diskSize: 1 << 28, protocolVersion: RunProtocol.version, saveSeconds: 0.1)
        let (found, state) = try #require(templates.find(key, console: console))
        var readBack = [UInt8](repeating: 0, count: 16)
        #expect(read(state, &readBack, 16) == 11, "the state, open")
        close(state)
        #expect(found.record.diskSize == 1 << 28 && found.record.protocolVersion == RunProtocol.version && found.record.description == "a machine\n")
        #expect(templates.list().map(\.template.record.key) == [key.digest])
        #expect(console.recordedLines.isEmpty)

        // Written over after it was made: refused, with a warning, and gone.
        let handle = try #require(FileHandle(forWritingAtPath: found.statePath))
        handle.seekToEndOfFile()
        handle.write(Data("more".utf8))
        try handle.close()
        #expect(templates.find(key, console: console) == nil)
        #expect(console.recordedLines.contains { $0.contains("changed since it was made") }, "\(console.recordedLines)")
        #expect(!FileStore.exists(found.folder))

        // A maker that gives up leaves no folder, and the next one may make it.
        let again = try #require(try templates.startMaking(key))
        again.abandon()
        again.abandon()
        #expect(templates.list().isEmpty)
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: templates.directory)) ?? []).filter { $0.hasPrefix(".") }.isEmpty)
        let third = try #require(try templates.startMaking(key))
        third.abandon()
        #expect(templates.remove(key: key.digest))

        // Made from an initrd that is then rebuilt: pruned; one still current stays.
        let machine = try #require(RunTemplates.key(plan: plan, command: Self.command(plan, base: 10, folder: "/c"), diskSize: nil, environment: ["PATH": dir + "/bin"]))
        let current = try #require(try templates.startMaking(machine))
        #expect(write(current.state, "state", 5) == 5)
        try current.commit(plan: plan, diskSize: nil, protocolVersion: RunProtocol.version, saveSeconds: 0.1)
        #expect(templates.pruneStale().isEmpty)
        try TestSupport.write("initrd 2", to: dir + "/initrd.new")
        #expect(rename(dir + "/initrd.new", plan.initrd) == 0)
        #expect(templates.pruneStale() == [machine.digest])
        #expect(templates.list().isEmpty)

        // A maker killed in its save left its partial folder: pruned once nobody holds its lock.
        let killed = templates.directory + "/.\(key.digest).999999.partial"
        let held = try #require(try templates.startMaking(key))
        try FileStore.createDirectory(killed)
        templates.pruneStale()
        #expect(FileStore.exists(killed), "its key's lock is held")
        held.abandon()
        templates.pruneStale()
        #expect(!FileStore.exists(killed))
    }

    @Test("while a template is saved the settings wait, start included; then they go, or the VM reports it is booted")
    func stateMachine() {
        var machine = RunStateMachine(stopGrace: .seconds(10), tty: false, makesTemplate: true)
        _ = machine.handle(.spawned)
        #expect(machine.handle(.hello(RunProtocol.version)) == [.saveTemplate])
        #expect(machine.handle(.hello(RunProtocol.version)) == [])
        #expect(machine.handle(.templateSaved) == [.sendSettings])
        #expect(machine.handle(.templateSaved) == [])

        var waiting = RunStateMachine(stopGrace: .seconds(10), tty: false, waitsForStart: true, makesTemplate: true)
        _ = waiting.handle(.spawned)
        #expect(waiting.handle(.hello(RunProtocol.version)) == [.saveTemplate])
        #expect(waiting.handle(.start) == [], "start while it is saved")
        #expect(waiting.handle(.templateSaved) == [.sendSettings])

        var stopped = RunStateMachine(stopGrace: .seconds(10), tty: false, makesTemplate: true)
        _ = stopped.handle(.spawned)
        _ = stopped.handle(.hello(RunProtocol.version))
        #expect(stopped.handle(.stop(grace: .seconds(1))).contains(.startStopTimer(.seconds(1))))
        #expect(stopped.handle(.templateSaved) == [], "no settings for a VM on its way out")

        var plain = RunStateMachine(stopGrace: .seconds(10), tty: false)
        _ = plain.handle(.spawned)
        #expect(plain.handle(.hello(RunProtocol.version)) == [.sendSettings])
    }
}
