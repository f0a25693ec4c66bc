import Foundation
import Synchronization
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryCore
@testable import VMFactoryLifecycle
@testable import VMFactoryKernel
@testable import VMFactoryRun

/// The lifecycle commands on a run that lives on: `run -d`, `exec`, `ps`, `logs`, `stop`,
/// `kill`, `rm`, `wait`, `inspect`, with the real executable and real boots under TCG.
@Suite(
    "Long-lived runs: run -d, exec, ps, logs, stop, kill, rm, wait, inspect",
    .tags(.boot), .scoped, .needsRoot, .needsPinnedKernel,
    .needsTool("umoci"), .needsTool("qemu-img"), .needsTool("qemu-system-x86_64"), .needsTool("qemu-system-s390x"), .needsTool("script")
)
struct LifecycleBootTests {
    /// A command of vmfactory's against the runs in `vm`'s cache.
    static func cli(_ vm: RunVM, _ command: String, _ arguments: [String], stdin: Data? = nil) async throws -> RunVM.Result {
        try await vm.command([command, "--cache-dir", vm.cache] + arguments, stdin: stdin)
    }

    /// `run -d` with `arguments`: the id it printed.
    static func detach(_ vm: RunVM, _ arguments: [String]) async throws -> String {
        let started = try await vm.run(["-d"] + arguments)
        #expect(started.status == 0, "\(started.stderr)")
        let id = started.text.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(id.count == 12 && id.allSatisfy(\.isHexDigit), "run -d prints the id: \(started.text)")
        return id
    }

    /// Until the command's log holds `text` (a minute at most).
    static func logs(_ vm: RunVM, _ run: String, contain text: String) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            if try await cli(vm, "logs", [run]).text.contains(text) { return true }
            try await Task.sleep(for: .milliseconds(200))
        }
        return false
    }

    /// Ends every run's supervisor of `vm`'s cache (their QEMUs go with them): a test that fails
    /// half-way leaves no VM running into the next suites.
    static func endRuns(_ vm: RunVM) {
        let ids = ((try? FileManager.default.contentsOfDirectory(atPath: vm.cache + "/runs")) ?? []).filter { !$0.hasPrefix(".") }
        for id in ids {
            guard let record = try? RunRecord.read(folder: vm.cache + "/runs/" + id), record.pid > 0,
                  let line = FileManager.default.contents(atPath: "/proc/\(record.pid)/cmdline"),
                  String(decoding: line, as: UTF8.self).contains(vm.cache) else { continue }
            kill(record.pid, SIGKILL)
        }
    }

    /// The app image's StopSignal is SIGUSR1: its stop is trapped, and it exits 3.
    static let serving = "trap 'echo stopping; exit 3' USR1; echo ready; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2 & wait $!; done"

    @Test("run -d, ps, exec (user, folder, environment, statuses, 3 MiB, stderr apart, four at once, a terminal), logs, stop with the trapped StopSignal, wait 3, rm", arguments: Target.allCases)
    func lifecycle(_ target: Target) async throws {
        let images = try await RunImages.shared(for: target)
        let vm = try await RunVM.make()
        defer { Self.endRuns(vm) }
        let name = "served-\(target)"
        let id = try await Self.detach(vm, ["--name", name, "-e", "FROM_RUN=r", "--entrypoint", "/bin/sh", images.app, "-c", Self.serving])
        let listed = try await Self.cli(vm, "ps", [])
        #expect(listed.text.contains(id) && listed.text.contains("Up ") && listed.text.contains(name), "\(listed.text)")
        let json = try await Self.cli(vm, "ps", ["--format", "json"])
        #expect(json.text.contains("\"status\" : \"running\""), "\(json.text)")
        let again = try await vm.run(["-d", "--name", name, images.plain, "-c", "true"])
        #expect(again.status == 125 && again.stderr.contains("the name \(name) is already in use by the run \(id)"), "\(again.stderr)")

        // The run's user, folder and environment; then -u, -w and -e over them.
        let defaults = try await Self.cli(vm, "exec", [name, "sh", "-c", "id -u; pwd; echo $FROM_IMAGE $FROM_RUN $HOME"])
        #expect(defaults.text == "1000\n/srv\n1 r /home/app\n", "\(defaults.stderr)")
        let given = try await Self.cli(vm, "exec", ["-u", "root:wheel", "-w", "/home", "-e", "FROM_RUN=exec", "-e", "NEW=n", String(id.prefix(6)), "sh", "-c", "id -u; id -g; pwd; echo $FROM_RUN $NEW; env | grep -c ."])
        #expect(given.text.hasPrefix("0\n10\n/home\nexec n\n"), "\(given.text) \(given.stderr)")
        // A folder the image lacks is not made for an exec (docker's exec fails on it too).
        let missing = try await Self.cli(vm, "exec", ["-w", "/no/such", name, "true"])
        #expect(missing.status == 126 && missing.stderr.contains("cannot enter the working directory /no/such"), "\(missing.stderr)")

        for code in [0, 3, 255] {
            let exited = try await Self.cli(vm, "exec", [name, "sh", "-c", "exit \(code)"])
            #expect(exited.status == Int32(code), "\(exited.stderr)")
        }
        let killed = try await Self.cli(vm, "exec", [name, "sh", "-c", "kill -KILL $$"])
        #expect(killed.status == 137)
        let notExecutable = try await Self.cli(vm, "exec", [name, "/etc/passwd"])
        #expect(notExecutable.status == 126 && notExecutable.stderr.contains("exec: \"/etc/passwd\": Permission denied"), "\(notExecutable.stderr)")
        let notFound = try await Self.cli(vm, "exec", [name, "no-such-program"])
        #expect(notFound.status == 127 && notFound.stderr.contains("executable file not found in $PATH"), "\(notFound.stderr)")

        let cat = try await Self.cli(vm, "exec", [name, "sh", "-c", "cat \(RunImages.randomFile); echo to-stderr >&2"])
        #expect(cat.status == 0 && SHA256Digest.of(cat.stdout) == SHA256Digest.of(images.random), "3 MiB byte for byte")
        #expect(cat.stderr == "to-stderr\n")

        // Four at once, each piping 200 KiB in and getting it back.
        let inputs = (0..<4).map { index in Data((0..<204_800).map { UInt8(($0 * (index + 3)) % 251) }) }
        let echoed = try await withThrowingTaskGroup(of: (Int, RunVM.Result).self) { group in
            for (index, input) in inputs.enumerated() {
                group.addTask { (index, try await Self.cli(vm, "exec", ["-i", name, "cat"], stdin: input)) }
            }
            return try await group.reduce(into: [Int: RunVM.Result]()) { $0[$1.0] = $1.1 }
        }
        for (index, input) in inputs.enumerated() {
            #expect(echoed[index]?.status == 0 && echoed[index]?.stdout == input, "exec -i number \(index)")
        }

        let line = "\(TestSupport.executable) exec --cache-dir \(vm.cache) -it \(name) sh"
        let typed = try await RunBootTests.script(line, input: "tty; stty size; echo typed-$((6*7))\nexit 7\n")
        #expect(typed.status == 7, "\(typed.output)")
        #expect(typed.output.contains("/dev/pts/") && typed.output.contains("typed-42"), "\(typed.output)")

        // cp both ways: a folder with a symlink, a hard link and 3 MiB; owners, modes and times kept.
        let dir = try TestSupport.temporaryDirectory()
        let tree = dir + "/tree"
        try FileStore.createDirectory(tree + "/sub")
        try images.random.write(to: URL(fileURLWithPath: tree + "/big"))
        #expect(link(tree + "/big", tree + "/hard") == 0)
        #expect(symlink("../big", tree + "/sub/link") == 0)
        try TestSupport.write("small\n", to: tree + "/sub/small")
        // Modes set here, whatever the umask the test runs under.
        #expect(chmod(tree + "/big", 0o644) == 0 && chmod(tree + "/sub/small", 0o644) == 0)
        #expect(chown(tree + "/sub/small", 1234, 5678) == 0 && chmod(tree + "/sub", 0o751) == 0)
        var times = [timespec(tv_sec: 1_600_000_000, tv_nsec: 0), timespec(tv_sec: 1_600_000_000, tv_nsec: 0)]
        #expect(utimensat(AT_FDCWD, tree + "/big", &times, 0) == 0)
        let copiedIn = try await Self.cli(vm, "cp", [tree, "\(name):/home/"])
        #expect(copiedIn.status == 0, "\(copiedIn.stderr)")
        let inside = try await Self.cli(vm, "exec", ["-u", "0", name, "sh", "-c", "cd /home/tree && sha256sum big hard && stat -c '%n %u:%g %a %h %Y' big hard && stat -c '%n %u:%g %a' sub sub/small && readlink sub/link"])
        let digest = SHA256Digest.of(images.random).hex
        #expect(inside.text == """
            \(digest)  big
            \(digest)  hard
            big 0:0 644 2 1600000000
            hard 0:0 644 2 1600000000
            sub 0:0 751
            sub/small 1234:5678 644
            ../big

            """, "\(inside.text) \(inside.stderr)")
        let copiedOut = try await Self.cli(vm, "cp", ["\(name):/home/tree", dir + "/back"])
        #expect(copiedOut.status == 0, "\(copiedOut.stderr)")
        #expect(try await SHA256Digest.ofFile(at: dir + "/back/big") == SHA256Digest.of(images.random))
        var big = stat(), hard = stat(), small = stat()
        #expect(stat(dir + "/back/big", &big) == 0 && stat(dir + "/back/hard", &hard) == 0 && big.st_ino == hard.st_ino, "the hard link is one")
        #expect(big.st_mtim.tv_sec == 1_600_000_000)
        #expect(lstat(dir + "/back/sub/small", &small) == 0 && small.st_uid == 1234 && small.st_gid == 5678)
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/back/sub/link")) == "../big")
        // A link the guest made that points out of the copy: refused, and nothing written.
        _ = try await Self.cli(vm, "exec", ["-u", "0", name, "ln", "-s", "/etc/passwd", "/home/tree/sub/escape"])
        let refused = try await Self.cli(vm, "cp", ["\(name):/home/tree", dir + "/hostile"])
        #expect(refused.status != 0 && refused.stderr.contains("symlink to '/etc/passwd' points outside the destination"), "\(refused.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["back", "tree"], "nothing else was written")

        // logs while the command writes; -f until the run ends.
        #expect(try await Self.logs(vm, name, contain: "tick 3"))
        let tail = try await Self.cli(vm, "logs", ["--tail", "2", name])
        #expect(tail.text.split(separator: "\n").count == 2 && tail.text.hasPrefix("tick "), "\(tail.text)")
        async let followed = Self.cli(vm, "logs", ["-f", name])
        try await Task.sleep(for: .seconds(1))
        let stopped = try await Self.cli(vm, "stop", ["-t", "20", name])
        #expect(stopped.status == 0 && stopped.text == "\(name)\n", "\(stopped.stderr)")
        let follow = try await followed
        #expect(follow.status == 0 && follow.text.hasPrefix("ready\ntick 0\n") && follow.text.hasSuffix("stopping\n"), "logs -f ends with the run: \(follow.text.suffix(80))")
        let waited = try await Self.cli(vm, "wait", [name])
        #expect(waited.text == "3\n", "\(waited.text) \(waited.stderr)")
        let all = try await Self.cli(vm, "ps", ["-a"])
        #expect(all.text.contains("Exited (3)"), "\(all.text)")
        #expect(!(try await Self.cli(vm, "ps", [])).text.contains(id))
        let inspected = try await Self.cli(vm, "inspect", [name])
        #expect(inspected.text.contains("\"exitCode\" : 3") && inspected.text.contains("\"status\" : \"exited\""), "\(inspected.text)")

        let late = try await Self.cli(vm, "exec", [name, "true"])
        #expect(late.status == 125 && late.stderr.contains("the run \(id) is not running: it exited with 3"), "\(late.stderr)")
        let removed = try await Self.cli(vm, "rm", [name])
        #expect(removed.status == 0, "\(removed.stderr)")
        #expect(try await Self.cli(vm, "ps", ["-a"]).text.split(separator: "\n").count == 1)
        await vm.expectNothingLeft()
    }

    @Test("kill -s USR1 reaches the command; rm refuses a running run, rm -f ends it; an exec still running ends with the run", arguments: Target.allCases)
    func killAndForce(_ target: Target) async throws {
        let images = try await RunImages.shared(for: target)
        let vm = try await RunVM.make()
        defer { Self.endRuns(vm) }
        let id = try await Self.detach(vm, [images.plain, "-c", "trap 'echo got-usr1' USR1; echo ready; while true; do sleep 0.2 & wait $!; done"])
        #expect(try await Self.logs(vm, id, contain: "ready"))
        let signalled = try await Self.cli(vm, "kill", ["-s", "USR1", id])
        #expect(signalled.status == 0, "\(signalled.stderr)")
        #expect(try await Self.logs(vm, id, contain: "got-usr1"))
        // An exec that would run for ever ends with the run, as under docker.
        async let long = Self.cli(vm, "exec", [id, "sleep", "1000"])
        try await Task.sleep(for: .seconds(1))
        let refused = try await Self.cli(vm, "rm", [id])
        #expect(refused.status != 0 && refused.stderr.contains("is still running"), "\(refused.stderr)")
        let forced = try await Self.cli(vm, "rm", ["-f", id])
        #expect(forced.status == 0, "\(forced.stderr)")
        let ended = try await long
        #expect(ended.status != 0, "the exec ended with the VM: \(ended.status) \(ended.stderr)")
        await vm.expectNothingLeft()
    }

    @Test("the supervisor SIGKILLed: its QEMU is gone within seconds, ps -a and wait say 137; a run outlives its terminal's session and SIGHUP")
    func supervisorEnds() async throws {
        let images = try await RunImages.shared(for: .x86_64)
        let vm = try await RunVM.make()
        defer { Self.endRuns(vm) }
        // Started from a shell that leads a session of its own, which then hangs up on everyone in it.
        let launch = Command("setsid", ["-w", "sh", "-c", "\(TestSupport.executable) \(vm.prefix.joined(separator: " ")) -d \(images.plain) -c 'while true; do sleep 1; done' 2>/dev/null; kill -HUP 0"])
        let launched = try await TestSupport.runner.run(launch, output: .capture)
        // The id is the first line (setsid says how its shell ended, on the same output).
        let id = String(launched.output.split(separator: "\n").first ?? "")
        #expect(id.count == 12, "\(launched.output)")
        let record = try RunRecord.read(folder: vm.cache + "/runs/" + id)
        kill(record.pid, SIGHUP)
        try await Task.sleep(for: .milliseconds(500))
        let answered = try await Self.cli(vm, "exec", [id, "echo", "still-here"])
        #expect(answered.text == "still-here\n", "the run answers after its session hung up: \(answered.stderr)")

        #expect(kill(record.pid, SIGKILL) == 0)
        let gone = await TestSupport.eventually(within: 5) { ((try? TestSupport.processes(matching: vm.cache)) ?? []).isEmpty }
        #expect(gone, "QEMU ended with its supervisor: \((try? TestSupport.processes(matching: vm.cache)) ?? [])")
        let all = try await Self.cli(vm, "ps", ["-a"])
        #expect(all.text.contains("Exited (137)"), "\(all.text)")
        let inspected = try await Self.cli(vm, "inspect", [id])
        #expect(inspected.text.contains("its supervisor (pid \(record.pid)) was killed"), "\(inspected.text)")
        let waited = try await Self.cli(vm, "wait", [id])
        #expect(waited.text == "137\n")
        #expect(try await Self.cli(vm, "rm", [id]).status == 0)
        await vm.expectNothingLeft()
    }

    @Test("a kernel and initrd of another run protocol version are refused, before the boot by their manifest and at the init's hello, naming both versions")
    func otherProtocolVersion() async throws {
        let images = try await RunImages.shared(for: .x86_64)
        let built = try await SharedBuild.shared.get()
        let vm = try await RunVM.make()
        let dir = try TestSupport.temporaryDirectory()
        let source = built.output + "/container/x86_64"
        // The manifest says the next version.
        let ours = RunProtocol.version, next = RunProtocol.version + 1
        let declared = dir + "/declared/container/x86_64"
        try FileStore.createDirectory(declared)
        for name in try FileManager.default.contentsOfDirectory(atPath: source) { try FileManager.default.copyItem(atPath: source + "/" + name, toPath: declared + "/" + name) }
        let manifest = try FileStore.readText(declared + "/manifest.json").replacingOccurrences(of: "\"runProtocol\" : \(ours)", with: "\"runProtocol\" : \(next)")
        #expect(manifest.contains("\"runProtocol\" : \(next)"))
        try TestSupport.write(manifest, to: declared + "/manifest.json")
        var other = vm
        other.output = dir + "/declared"
        let refused = try await other.run([images.plain, "-c", "true"])
        #expect(refused.status == 125 && refused.stderr.contains("speaks run protocol version \(next), and this vmfactory speaks version \(ours)"), "\(refused.stderr)")

        // The manifest says ours, but the init in the initrd speaks the next: its hello is refused.
        let spoken = dir + "/spoken/container/x86_64"
        try FileStore.createDirectory(spoken)
        for name in try FileManager.default.contentsOfDirectory(atPath: source) { try FileManager.default.copyItem(atPath: source + "/" + name, toPath: spoken + "/" + name) }
        let init2 = dir + "/init"
        try await TestSupport.runner.runChecked(
            Command("gcc", InitCompiler.flags + ["-DVMF_PROTOCOL_VERSION=\(next)", "-o", init2] + InitCompiler.sources, workingDirectory: TestSupport.repositoryRoot + "/Sources/guest-init"),
            what: "compiling an init of protocol version \(next)"
        )
        // A second archive after the first replaces /init (the kernel unpacks them in order).
        var initrd = try FileStore.readData(spoken + "/initrd.cpio")
        initrd.append(Data(count: (4 - initrd.count % 4) % 4))
        try ArchiveWriter.write([ArchiveWriter.Entry(path: "init", kind: .file(try FileStore.readData(init2)), mode: 0o755)], to: dir + "/init.cpio", format: .cpioNewc, compression: .none)
        initrd.append(try FileStore.readData(dir + "/init.cpio"))
        try initrd.write(to: URL(fileURLWithPath: spoken + "/initrd.cpio"))
        other.output = dir + "/spoken"
        let hello = try await other.run([images.plain, "-c", "true"])
        #expect(hello.status == 125 && hello.stderr.contains("the initrd speaks run protocol version \(next), and this vmfactory speaks version \(ours)"), "\(hello.stderr)")
        await vm.expectNothingLeft()
    }
}
