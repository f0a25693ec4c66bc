import Foundation
import Synchronization
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryCore
@testable import VMFactoryImage
@testable import VMFactoryRun

/// Images for the run tests, made by umoci from Debian's busybox-static (the host's for
/// x86_64, the s390x package's for s390x), with users, groups and a random file of 3 MiB.
enum RunImages {
    static let randomFile = "/data/random.bin"

    static func busybox(for target: Target) throws -> Data {
        let path = target == .x86_64 ? "/bin/busybox" : TestSupport.repositoryRoot + "/.build/test-fixtures/s390x/busybox"
        guard FileStore.isRegularFile(path) else {
            throw VMFactoryError(.notFound, "no \(target) busybox at \(path)", hint: "scripts/setup --test-tools downloads it")
        }
        return try FileStore.readData(path)
    }

    private static let made = Mutex<[Target: Task<(plain: String, app: String, random: Data), any Error>]>([:])

    /// The images of `make`, made once per test run and target in the test process's folder
    /// (the tests only read them).
    static func shared(for target: Target) async throws -> (plain: String, app: String, random: Data) {
        let task = made.withLock { tasks in
            if let task = tasks[target] { return task }
            let task = Task { try await make(for: target, in: TestScope.processRoot + "/run-images-\(target)") }
            tasks[target] = task
            return task
        }
        return try await task.value
    }

    /// `plain` has the Entrypoint /bin/sh (so `plain -c SCRIPT` runs a script); `app` has an Entrypoint, a Cmd, an Env, a WorkingDir, a User and
    /// a StopSignal.
    static func make(for target: Target, in directory: String) async throws -> (plain: String, app: String, random: Data) {
        var generator = SystemRandomNumberGenerator()
        let random = Data((0..<(3 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) })
        var entries: [ArchiveWriter.Entry] = [
            .init(path: "bin/", kind: .directory, mode: 0o755),
            .init(path: "bin/busybox", kind: .file(try busybox(for: target)), mode: 0o755),
            .init(path: "etc/", kind: .directory, mode: 0o755),
            .init(path: "etc/passwd", kind: .file(Data("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n".utf8))),
            .init(path: "etc/group", kind: .file(Data("root:x:0:\nwheel:x:10:root\napp:x:1000:\nstaff:x:50:app\n".utf8))),
            .init(path: "home/", kind: .directory, mode: 0o755),
            .init(path: "home/app/", kind: .directory, mode: 0o755, uid: 1000, gid: 1000),
            .init(path: "srv/", kind: .directory, mode: 0o755),
            .init(path: "data/", kind: .directory, mode: 0o755),
            .init(path: String(randomFile.dropFirst()), kind: .file(random), mode: 0o644),
        ]
        let applets = try await ImageFixtures.run("/bin/busybox", ["--list"]).split(separator: "\n").map(String.init).filter { $0 != "busybox" }
        entries += applets.map { .init(path: "bin/" + $0, kind: .symlink("busybox"), mode: 0o777) }
        let layout = try await ImageFixtures.singleLayer(entries, in: directory, name: "box-\(target)", architecture: target == .x86_64 ? "amd64" : "s390x")
        try await ImageFixtures.umoci(["config", "--no-history", "--image", layout.umociImage, "--config.entrypoint", "/bin/sh", "--config.env", "PATH=/bin"])
        try await ImageFixtures.umoci([
            "config", "--no-history", "--image", layout.umociImage, "--tag", "app",
            "--config.entrypoint", "/bin/echo", "--config.entrypoint", "ep", "--config.cmd", "default-cmd",
            "--config.env", "PATH=/bin", "--config.env", "FROM_IMAGE=1", "--config.env", "OVER=image",
            "--config.workingdir", "/srv", "--config.user", "app", "--config.stopsignal", "SIGUSR1",
        ])
        return (layout.reference, "oci:\(layout.path):app", random)
    }
}

/// `vmfactory run` as a user runs it: the real executable, the container recipe's kernel
/// built by the real command line, images from umoci, boots under TCG.
struct RunVM {
    var cache: String
    var output: String

    static func make() async throws -> RunVM {
        let built = try await SharedBuild.shared.get()
        return RunVM(cache: try TestSupport.temporaryDirectory("run-cache"), output: built.output)
    }

    struct Result {
        var status: Int32
        var stdout: Data
        var stderr: String
        var text: String { String(decoding: stdout, as: UTF8.self) }
    }

    /// The templates every run suite's runs share: each machine boots cold once per test
    /// process, and its other runs start from its template.
    static let sharedTemplates = TestScope.processRoot + "/templates"
    var templates = RunVM.sharedTemplates

    var prefix: [String] { ["run", "--cache-dir", cache, "--output-dir", output, "--offline", "--accel", "tcg", "--template-dir", templates] }

    /// What a run has printed on stdout so far.
    final class Live: Sendable {
        let child: ChildProcess
        private let data = Mutex(Data())
        init(child: ChildProcess) { self.child = child }
        func append(_ chunk: UnsafeRawBufferPointer) { data.withLock { $0.append(contentsOf: chunk) } }
        var output: Data { data.withLock { $0 } }

        /// Waits (at most a minute) until stdout holds `text`.
        func waitFor(_ text: String) async -> Bool {
            await TestSupport.eventually(within: 60) { String(decoding: output, as: UTF8.self).contains(text) }
        }
    }

    /// Runs `vmfactory run OPTIONS...`; `stdin` is written to its stdin, then closed;
    /// `onStart` runs meanwhile.
    func run(_ arguments: [String], stdin: Data? = nil, environment: [String: String] = [:], onStart: (@Sendable (Live) async -> Void)? = nil) async throws -> Result {
        try await command(prefix + arguments, stdin: stdin, environment: environment, onStart: onStart)
    }

    /// Runs `vmfactory ARGUMENTS...` (any command), as `run` does.
    func command(_ arguments: [String], stdin: Data? = nil, environment: [String: String] = [:], onStart: (@Sendable (Live) async -> Void)? = nil) async throws -> Result {
        let command = Command(TestSupport.executable, arguments, environment: environment)
        let child = try await ChildProcess.spawn(
            command, environment: command.environment(on: TestSupport.environment),
            stdin: stdin == nil ? .null : .pipe, stdout: .pipe, stderr: .pipe
        )
        if let stdin, let fd = child.stdin {
            Thread.detachNewThread {
                stdin.withUnsafeBytes { try? FileStore.writeAll(fd, $0, path: "stdin") }
                close(fd)
            }
        }
        let live = Live(child: child)
        let stdoutFD = child.stdout!
        async let out: Void = withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                PipeReader.forEachChunk(stdoutFD) { chunk in
                    live.append(chunk)
                    return true
                }
                close(stdoutFD)
                continuation.resume()
            }
        }
        async let err = PipeReader.readAll(child.stderr!)
        await onStart?(live)
        let status: Int32 = switch await child.wait() {
        case .exited(let code): code
        case .signaled(let signal): 128 + signal
        }
        await out
        return Result(status: status, stdout: live.output, stderr: String(decoding: await err, as: UTF8.self))
    }

    /// No QEMU or virtiofsd of this cache is left, nor a run's folder.
    func expectNothingLeft(sourceLocation: SourceLocation = #_sourceLocation) async {
        let gone = await TestSupport.eventually(within: 5) {
            let left = (try? TestSupport.processes(matching: cache)) ?? []
            return left.isEmpty
        }
        #expect(gone, "QEMU or virtiofsd of \(cache) still running: \((try? TestSupport.processes(matching: cache)) ?? [])", sourceLocation: sourceLocation)
        let folders = ((try? FileManager.default.contentsOfDirectory(atPath: cache + "/runs")) ?? []).filter { !$0.hasPrefix(".") }
        #expect(folders.isEmpty, "runs left behind: \(folders)", sourceLocation: sourceLocation)
    }
}

extension TestSupport {
    /// Command lines of live processes that mention `text` (from /proc, an independent view).
    static func processes(matching text: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: "/proc").compactMap { pid -> String? in
            guard Int32(pid) != nil, let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
            let line = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            let state = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8))?.split(separator: " ").dropFirst(2).first
            guard line.contains(text), !line.contains("vmfactory run"), state != "Z" else { return nil }
            return line
        }
    }
}

@Suite(
    "vmfactory run: an image behaves as under docker run, on both targets",
    .tags(.boot), .scoped, .needsRoot, .needsPinnedKernel,
    .needsTool("umoci"), .needsTool("qemu-img"), .needsTool("qemu-system-x86_64"), .needsTool("qemu-system-s390x"), .needsTool("script")
)
struct RunBootTests {
    @Test("Entrypoint, Cmd, Env, WorkingDir and User combine with COMMAND, --entrypoint, --env-file, -e, -w and -u", arguments: Target.allCases)
    func process(_ target: Target) async throws {
        let dir = try TestSupport.temporaryDirectory()
        let images = try await RunImages.shared(for: target)
        let vm = try await RunVM.make()
        let plain = try await vm.run([images.app])
        #expect(plain.status == 0, "\(plain.stderr)")
        #expect(plain.text == "ep default-cmd\n")
        let replaced = try await vm.run([images.app, "x", "y z"])
        #expect(replaced.text == "ep x y z\n")

        try TestSupport.write("# from a file\nOVER=file\nFILE=f\n", to: dir + "/vars.env")
        let script = "id -u; id -g; id -G; pwd; echo \"$FROM_IMAGE $OVER $FILE $E $HOME $HOSTNAME\"; cat /etc/hostname"
        let combined = try await vm.run(["--env-file", dir + "/vars.env", "-e", "OVER=cli", "-e", "E=e", "--hostname", "box1", "--entrypoint", "/bin/sh", images.app, "-c", script])
        #expect(combined.status == 0, "\(combined.stderr)")
        #expect(combined.text == "1000\n1000\n1000 50\n/srv\n1 cli f e /home/app box1\nbox1\n")
        let asRoot = try await vm.run(["-u", "root:wheel", "-w", "/made/here", "--entrypoint", "/bin/sh", images.app, "-c", "id -u; id -g; pwd"])
        #expect(asRoot.text == "0\n10\n/made/here\n", "\(asRoot.stderr)")
        let byNumber = try await vm.run(["-u", "4242", images.plain, "-c", "id -u; id -g; echo $HOME"])
        #expect(byNumber.text == "4242\n0\n/\n", "\(byNumber.stderr)")
        let unknown = try await vm.run(["-u", "nobody-here", images.plain, "-c", "true"])
        #expect(unknown.status == 125)
        #expect(unknown.stderr.contains("unable to find user nobody-here"))
        await vm.expectNothingLeft()
    }

    @Test("exit statuses 0, 3 and 255, a signal death as 128+N, 126 and 127 with messages", arguments: Target.allCases)
    func exitStatuses(_ target: Target) async throws {
        let images = try await RunImages.shared(for: target)
        let vm = try await RunVM.make()
        for code in [0, 3, 255] {
            let run = try await vm.run([images.plain, "-c", "exit \(code)"])
            #expect(run.status == Int32(code), "\(run.stderr)")
        }
        let killed = try await vm.run([images.plain, "-c", "kill -SEGV $$"])
        #expect(killed.status == 128 + SIGSEGV)
        let notExecutable = try await vm.run(["--entrypoint", "/etc/passwd", images.plain])
        #expect(notExecutable.status == 126)
        #expect(notExecutable.stderr.contains("exec: \"/etc/passwd\": Permission denied"))
        let notFound = try await vm.run(["--entrypoint", "no-such-program", images.plain])
        #expect(notFound.status == 127)
        #expect(notFound.stderr.contains("executable file not found in $PATH"))
        await vm.expectNothingLeft()
    }

    @Test("run --accel kvm on a host whose KVM stops the guest ends at once with 125, says to use --accel tcg, and leaves no QEMU")
    func kvmFailsAtOnce() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let images = try await RunImages.shared(for: .x86_64)
        let vm = try await RunVM.make()
        let fake = try BootBenchUnitTests.kvmFailingQEMU(in: dir)
        let started = ContinuousClock.now
        let run = try await vm.run(
            ["--accel", "kvm", "--timeout", "600s", images.plain, "-c", "true"],
            environment: ["PATH": fake + ":" + (TestSupport.environment["PATH"] ?? "/usr/bin:/bin")]
        )
        BootBenchUnitTests.expectStoppedAtOnce(run.stderr, status: run.status, expected: 125, seconds: (ContinuousClock.now - started).seconds, limit: 60, directory: dir)
        await vm.expectNothingLeft()
    }

    @Test("run --kernel-image: the container kernel published to an OCI layout runs the image, with no build in the output folder")
    func publishedKernel() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let images = try await RunImages.shared(for: .x86_64)
        let built = try await SharedBuild.shared.get()
        let cache = try TestSupport.temporaryDirectory("run-cache")
        let published = try await TestSupport.runCLI([
            "publish", "--recipe", "container", "--target", "x86_64", "--to", "oci:\(dir)/kernels:v1", "--cache-dir", cache, "--output-dir", built.output,
        ])
        #expect(published.status == 0, "\(published.stderr)")
        let empty = dir + "/no-outputs"
        try FileStore.createDirectory(empty)
        let vm = RunVM(cache: cache, output: empty)
        let run = try await vm.run(["--kernel-image", "oci:\(dir)/kernels:v1", images.plain, "-c", "uname -r; exit 7"])
        #expect(run.status == 7, "\(run.stderr)")
        let release = try #require(built.results.first { $0.target == .x86_64 }?.manifest.kernel?.release)
        #expect(run.text == release + "\n")
        #expect(!FileStore.exists(empty + "/container"), "a kernel was built instead of the published one")
        await vm.expectNothingLeft()
    }

    @Test("stdout and stderr apart and byte for byte (3 MiB through a pipe), stdin with its end of file, a terminal through a pty", arguments: Target.allCases)
    func streams(_ target: Target) async throws {
        let images = try await RunImages.shared(for: target)
        let vm = try await RunVM.make()
        // --quiet: vmfactory's own progress (the first conversion) stays off stderr.
        let cat = try await vm.run(["--quiet", images.plain, "-c", "cat \(RunImages.randomFile); echo to-stderr >&2"])
        #expect(cat.status == 0)
        #expect(cat.stdout.count == images.random.count)
        #expect(SHA256Digest.of(cat.stdout) == SHA256Digest.of(images.random), "the bytes of the image's file, unchanged")
        #expect(cat.stderr == "to-stderr\n", "stderr holds the command's stderr only: no kernel or init messages")

        let input = Data((0..<200_000).map { UInt8($0 % 251) })
        let echoed = try await vm.run(["-i", images.plain, "-c", "cat; echo after-eof"], stdin: input)
        #expect(echoed.status == 0, "\(echoed.stderr)")
        #expect(echoed.stdout == input + Data("after-eof\n".utf8))
        let noInput = try await vm.run([images.plain, "-c", "cat; echo nothing"], stdin: Data("ignored".utf8))
        #expect(noInput.text == "nothing\n", "without -i stdin is /dev/null")

        // A host pty from script(1): the guest command has a terminal of its own.
        let line = (TestSupport.executable + " " + vm.prefix.joined(separator: " ")).replacingOccurrences(of: "'", with: "")
        let typed = try await Self.script("\(line) -it \(images.plain)", input: "tty; stty size; echo typed-$((6*7))\nexit 7\n")
        #expect(typed.status == 7, "\(typed.output)")
        #expect(typed.output.contains("/dev/pts/0"))
        #expect(typed.output.contains("typed-42"))
        await vm.expectNothingLeft()
    }

    /// Runs `command` under script(1), which gives it a pseudo-terminal; `input` is typed.
    static func script(_ command: String, input: String) async throws -> (status: Int32, output: String) {
        let run = Command("script", ["-qec", command, "/dev/null"])
        let child = try await ChildProcess.spawn(run, environment: run.environment(on: TestSupport.environment), stdin: .pipe, stdout: .pipe, stderr: .sameAsStdout)
        let fd = child.stdin!
        Thread.detachNewThread {
            // The shell reads what is typed once its prompt is up.
            sleep(3)
            Array(input.utf8).withUnsafeBytes { try? FileStore.writeAll(fd, $0, path: "script") }
            sleep(30)
            close(fd)
        }
        async let output = PipeReader.readAll(child.stdout!)
        let status: Int32 = switch await child.wait() {
        case .exited(let code): code
        case .signaled(let signal): 128 + signal
        }
        return (status, String(decoding: await output, as: UTF8.self))
    }

    @Test("9p volumes read and written, a read-only one refused in the guest; the image's disk keeps its sha256 after a run that writes everywhere", arguments: Target.allCases)
    func volumesAndDisk(_ target: Target) async throws {
        let dir = try TestSupport.temporaryDirectory()
        let images = try await RunImages.shared(for: target)
        let vm = try await RunVM.make()
        let shared = dir + "/shared"
        try FileStore.createDirectory(shared)
        // Run as root, QEMU is nobody: the folder lets it in (docs/security.md).
        chmod(shared, 0o777)
        try TestSupport.write("from the host\n", to: shared + "/in.txt")
        let rw = try await vm.run(["-v", shared + ":/mnt/shared", images.plain, "-c", "cat /mnt/shared/in.txt; echo from-guest > /mnt/shared/out.txt"])
        #expect(rw.status == 0, "\(rw.stderr)")
        #expect(rw.text == "from the host\n")
        #expect(try FileStore.readText(shared + "/out.txt") == "from-guest\n")

        let ro = try await vm.run(["-v", shared + ":/mnt/shared:ro", images.plain, "-c", "cat /mnt/shared/in.txt; echo no > /mnt/shared/refused.txt"])
        #expect(ro.status != 0)
        #expect(ro.text == "from the host\n")
        #expect(ro.stderr.contains("Read-only file system"))
        #expect(!FileStore.exists(shared + "/refused.txt"))

        let disk = try #require(try FileManager.default.contentsOfDirectory(atPath: vm.cache + "/rootfs").compactMap { key -> String? in
            let path = vm.cache + "/rootfs/" + key + "/disk.qcow2"
            return FileStore.isRegularFile(path) ? path : nil
        }.first)
        let before = try await TestSupport.sha256sum(disk)
        let everywhere = try await vm.run([images.plain, "-c", "for d in / /etc /bin /data /srv /home/app; do echo x > $d/written; done; rm /bin/cat; rm -r /data; sync"])
        #expect(everywhere.status == 0, "\(everywhere.stderr)")
        #expect(try await TestSupport.sha256sum(disk) == before, "the converted image's disk is never written")
        let fresh = try await vm.run([images.plain, "-c", "ls /written /etc/written 2>&1; test -f \(RunImages.randomFile) && echo intact"])
        #expect(fresh.text.contains("intact"))
        #expect(fresh.text.contains("No such file"), "--rm: the next run starts from the image")
        await vm.expectNothingLeft()
    }

    @Test("two runs of one image at once do not see each other's writes")
    func concurrentRuns() async throws {
        let images = try await RunImages.shared(for: .x86_64)
        let vm = try await RunVM.make()
        let script = "echo $0 > /etc/mine; sleep 3; cat /etc/mine; ls /etc/mine-*; echo $0 > /etc/mine-$0; ls /etc | grep mine"
        async let first = vm.run([images.plain, "-c", script, "first"])
        async let second = vm.run([images.plain, "-c", script, "second"])
        let (a, b) = try await (first, second)
        #expect(a.text == "first\nmine\nmine-first\n", "\(a.stderr)")
        #expect(b.text == "second\nmine\nmine-second\n", "\(b.stderr)")
        await vm.expectNothingLeft()
    }

    @Test("a guest that fills its disk gets ENOSPC and vmfactory is fine; --timeout ends the VM with 124; --network none has no interface")
    func faults() async throws {
        let images = try await RunImages.shared(for: .x86_64)
        let vm = try await RunVM.make()
        let fill = try await vm.run([images.plain, "-c", "dd if=/dev/zero of=/fill bs=1M 2>&1; echo dd=$?; rm /fill; echo after > /after && cat /after"])
        #expect(fill.status == 0, "\(fill.stderr)")
        #expect(fill.text.contains("No space left on device"))
        #expect(fill.text.contains("dd=1"))
        #expect(fill.text.hasSuffix("after\n"), "the disk works again once the file is gone")

        // The limit counts from the VM's start, boot included: it is generous so that a boot slowed
        // by the rest of the suite still gets the command started, and far below the command's sleep.
        let started = ContinuousClock.now
        let slow = try await vm.run(["--timeout", "20s", images.plain, "-c", "echo started; sleep 600"])
        #expect(slow.status == 124)
        #expect(slow.text == "started\n", "\(slow.stderr)")
        #expect(slow.stderr.contains("did not finish within the --timeout"))
        #expect(ContinuousClock.now - started < .seconds(60))

        let none = try await vm.run(["--network", "none", images.plain, "-c", "ls /sys/class/net; cat /etc/hosts"])
        #expect(none.text.hasPrefix("lo\n"), "\(none.stderr)")
        let net = try await vm.run([images.plain, "-c", "ls /sys/class/net; cat /etc/resolv.conf; ip -4 addr show eth0 | grep -o 'inet [0-9./]*'"])
        #expect(net.text == "eth0\nlo\nnameserver 10.0.2.3\ninet 10.0.2.15/24\n", "\(net.stderr)")
        await vm.expectNothingLeft()
    }

    @Test("SIGTERM to vmfactory: a command that traps it exits its way; one that ignores it is ended after the grace period; nothing is left", arguments: Target.allCases)
    func stopping(_ target: Target) async throws {
        let images = try await RunImages.shared(for: target)
        let vm = try await RunVM.make()
        let terminate: @Sendable (RunVM.Live) async -> Void = { live in
            // Once the command is up (its first line is out), stop vmfactory as `docker stop` would.
            #expect(await live.waitFor("up\n"))
            live.child.signalLeader(SIGTERM)
        }
        let trapping = try await vm.run(["--stop-timeout", "20s", images.plain, "-c", "trap 'echo got-term; exit 9' TERM; echo up; while true; do sleep 0.2; done"], onStart: terminate)
        #expect(trapping.status == 9, "\(trapping.stderr)")
        #expect(trapping.text == "up\ngot-term\n")
        // Timed from the signal, not from the start: a boot slowed by the rest of the suite
        // does not count against the grace period.
        final class Moment: Sendable { let value = Mutex<ContinuousClock.Instant?>(nil) }
        let signalled = Moment()
        let ignoring = try await vm.run(["--stop-timeout", "2s", images.plain, "-c", "trap '' TERM; echo up; while true; do sleep 0.2; done"]) { live in
            await terminate(live)
            signalled.value.withLock { $0 = .now }
        }
        let afterSignal = ContinuousClock.now - (signalled.value.withLock { $0 } ?? .now)
        #expect(ignoring.status == 137)
        #expect(ignoring.stderr.contains("did not stop within 2.0s"))
        #expect(afterSignal >= .seconds(2) && afterSignal < .seconds(30), "ended \(afterSignal) after SIGTERM, with a grace period of 2 s")
        // The image's StopSignal is what the stop sends.
        let stopSignal = try await vm.run(["--entrypoint", "/bin/sh", images.app, "-c", "trap 'echo got-usr1; exit 0' USR1; echo up; while true; do sleep 0.2; done"], onStart: terminate)
        #expect(stopSignal.text == "up\ngot-usr1\n", "\(stopSignal.stderr)")
        await vm.expectNothingLeft()
    }

    @Test("virtio-fs volumes through virtiofsd: read, written, read-only refused; virtiofsd ends with the run")
    func virtiofs() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let images = try await RunImages.shared(for: .x86_64)
        let vm = try await RunVM.make()
        let shared = dir + "/vfs"
        try FileStore.createDirectory(shared)
        try TestSupport.write("over virtio-fs\n", to: shared + "/in.txt")
        let rw = try await vm.run(["-v", shared + ":/vfs:virtiofs", images.plain, "-c", "cat /vfs/in.txt; grep -c ' /vfs virtiofs ' /proc/mounts; echo back > /vfs/out.txt; mknod /vfs/null c 1 3 2>/dev/null || echo no-devices"])
        #expect(rw.status == 0, "\(rw.stderr)")
        #expect(rw.text == "over virtio-fs\n1\nno-devices\n")
        #expect(try FileStore.readText(shared + "/out.txt") == "back\n")
        #expect(!FileStore.exists(shared + "/null"), "virtiofsd runs without CAP_MKNOD")
        #expect(rw.stderr.contains("warning: the virtio-fs volume \(shared) is writable by the guest as root"), "\(rw.stderr)")
        let ro = try await vm.run(["--mount", "type=virtiofs,source=\(shared),target=/vfs,readonly", images.plain, "-c", "cat /vfs/in.txt; echo no > /vfs/refused"])
        #expect(ro.status != 0)
        #expect(ro.stderr.contains("Read-only file system"))
        #expect(!FileStore.exists(shared + "/refused"))
        await vm.expectNothingLeft()
    }

    @Test("--rootfs: a folder as the guest's root over virtio-fs or 9p, written in place, the kernel picked by the program's ELF header; host files bind-mounted, not written", arguments: Target.allCases)
    func rootFolder(_ target: Target) async throws {
        let dir = try TestSupport.temporaryDirectory()
        let images = try await RunImages.shared(for: target)
        let vm = try await RunVM.make()
        let bundle = dir + "/bundle"
        try await ImageFixtures.umoci(["unpack", "--image", String(images.plain.dropFirst("oci:".count)), bundle])
        let root = bundle + "/rootfs"
        // No --target: the folder's /bin/sh says which kernel.
        let run = try await vm.run(["--rootfs", root, "/bin/sh", "-c", "uname -m; echo written > /srv/out.txt; mkdir /made; cat /etc/hostname; awk '$2 == \"/\" { print $3 }' /proc/mounts; exit 4"])
        #expect(run.status == 4, "\(run.stderr)")
        let lines = run.text.split(separator: "\n").map(String.init)
        #expect(lines.first == (target == .x86_64 ? "x86_64" : "s390x"), "\(run.text)")
        // virtio-fs for a guest of the host's byte order, 9p through virtfs-proxy-helper otherwise.
        #expect(lines.count == 3 && lines[2] == (target == .x86_64 ? "virtiofs" : "9p"), "\(run.text)")
        #expect(try FileStore.readText(root + "/srv/out.txt") == "written\n", "the write landed in the folder")
        #expect(FileStore.isDirectory(root + "/made"))
        // The host files reached the guest over the folder's own, which keep their bytes.
        #expect(lines.count > 1 && !lines[1].isEmpty)
        #expect(((try? FileStore.readText(root + "/etc/hostname")) ?? "") == "", "the folder's /etc/hostname is a mount point, never written")
        #expect(FileStore.exists(root + "/bin/busybox"))
        // A folder that is not there, and one without a command: errors before anything starts.
        let missing = try await vm.run(["--rootfs", dir + "/nothing", "/bin/true"])
        #expect(missing.status == 125 && missing.stderr.contains("--rootfs \(dir)/nothing is not a folder"), "\(missing.stderr)")
        let bare = try await vm.run(["--rootfs", root])
        #expect(bare.status == 125 && bare.stderr.contains("has no image config to take a command from"), "\(bare.stderr)")
        await vm.expectNothingLeft()
    }

    @Test("the classic demo: busybox httpd in the VM serves a read-only host folder on a published port; a file changed on the host is served changed", .needsTool("curl"))
    func httpd() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let images = try await RunImages.shared(for: .x86_64)
        let vm = try await RunVM.make()
        let site = dir + "/site"
        try FileStore.createDirectory(site)
        try TestSupport.write("first version\n", to: site + "/index.html")
        let port = try PortForwardProbe.freePort()
        let served = try await vm.run(["-p", "\(port):80", "-v", site + ":/www:ro", images.plain, "-c", "httpd -f -p 80 -h /www"]) { live in
            var first = ""
            for _ in 0..<120 {
                first = (try? await Self.curl("http://127.0.0.1:\(port)/")) ?? ""
                if !first.isEmpty { break }
                try? await Task.sleep(for: .milliseconds(500))
            }
            #expect(first == "first version\n")
            try? TestSupport.write("second version\n", to: site + "/index.html")
            #expect((try? await Self.curl("http://127.0.0.1:\(port)/")) == "second version\n")
            // The port is taken while the VM serves it: a second run says so before booting.
            let busy = try? await vm.run(["-p", "\(port):80", images.plain, "-c", "true"])
            #expect(busy?.status == 125)
            #expect(busy?.stderr.contains("already in use") == true)
            live.child.signalLeader(SIGTERM)
        }
        #expect(served.status == 143 || served.status == 0, "httpd ends on the stop signal: \(served.stderr)")
        await vm.expectNothingLeft()
    }

    static func curl(_ url: String) async throws -> String {
        let result = try await TestSupport.runner.run(Command("curl", ["-sf", "--max-time", "5", url]), output: .capture)
        guard result.succeeded else { return "" }
        return result.output
    }
}

enum PortForwardProbe {
    /// A TCP port nothing listens on now.
    static func freePort() throws -> Int {
        try PortForward(hostAddress: "127.0.0.1", hostPort: 0, guestPort: 80, proto: .tcp).reserved().hostPort
    }
}
