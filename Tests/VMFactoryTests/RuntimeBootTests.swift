import Foundation
import Testing
@testable import VMFactoryCore
import VMFactoryRuntime

/// vmfactory-runtime as podman runs it (podman 4.3 through conmon, its containers microVMs
/// under TCG), and with runc's calls made directly on a bundle, as containerd's shim makes them.
/// The suite's podman has a store of its own (`.podman`); each test has a runtime install of its
/// own and removes its containers, passed or failed.
@Suite(
    "vmfactory-runtime under podman: run, -i, -d with kill, stop, logs and rm, diff, limits; runc's calls on a bundle",
    .tags(.boot), .scoped, .needsRoot, .needsPinnedKernel,
    .needsTool("podman"), .needsTool("umoci"), .needsTool("qemu-system-x86_64"), .needsTool("iptables-save"), .needsTool("ip"),
    .podman,
    // One at a time: two tests on podman's default network would see each other's share of the
    // host's network as their own leftovers.
    .serialized
)
struct RuntimeBootTests {
    @Test("run --rm: stdout on podman's default network (nothing of the container left on the host's network), exit 3, 127 and 126 with docker's messages")
    func runs() async throws {
        try await RuntimeTest.with { test in
            let image = try await test.image()
            let before = try await HostNetwork.snapshot()
            let hello: RunVM.Result
            do {
                hello = try await test.podman(["run", "--rm"] + test.runOptions + ["--entrypoint", "", image, "echo", "hi"])
            } catch {
                await (try? await HostNetwork.snapshot())?.undo(since: before)
                throw error
            }
            #expect(hello.status == 0, "\(hello.stderr)")
            #expect(hello.text == "hi\n", "\(hello.stderr)")
            // podman tears the network down after the container has ended, maybe after run returns.
            var after = try await HostNetwork.snapshot()
            let deadline = ContinuousClock.now + .seconds(15)
            while !after.containerLeftovers(since: before).isEmpty, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
                after = try await HostNetwork.snapshot()
            }
            #expect(after.containerLeftovers(since: before).isEmpty, "the container's network is left: \(after.containerLeftovers(since: before))")
            await after.undo(since: before)
            let restored = try await HostNetwork.snapshot()
            #expect(restored == before, "podman's changes to the host's network not taken back: \(restored.changes(since: before))")

            let none = test.runOptions + ["--network", "none"]
            let exited = try await test.podman(["run", "--rm"] + none + [image, "-c", "echo before-exit; exit 3"])
            #expect(exited.status == 3, "\(exited.stderr)")
            #expect(exited.text == "before-exit\n")
            let notFound = try await test.podman(["run", "--rm"] + none + ["--entrypoint", "", image, "no-such-program", "x"])
            #expect(notFound.status == 127, "\(notFound.stderr)")
            #expect(notFound.stderr.contains("exec: \"no-such-program\": executable file not found in $PATH"), "\(notFound.stderr)")
            #expect(notFound.text.isEmpty)
            let notExecutable = try await test.podman(["run", "--rm"] + none + ["--entrypoint", "", image, "/etc/passwd"])
            #expect(notExecutable.status == 126, "\(notExecutable.stderr)")
            #expect(notExecutable.stderr.contains("exec: \"/etc/passwd\": Permission denied"), "\(notExecutable.stderr)")
            let listed = try await test.podman(["ps", "--all", "--quiet", "--filter", "label=vmfactory.test=" + test.label])
            #expect(listed.text.isEmpty, "run --rm left containers: \(listed.text)")
            await test.runtime.expectNothingLeft()
        }
    }

    @Test("run -i: 256 KiB through a pipe reach the command and come back byte for byte, then its end of file; without -i stdin is empty")
    func stdin() async throws {
        try await RuntimeTest.with { test in
            let image = try await test.image()
            var generator = SystemRandomNumberGenerator()
            let input = Data((0..<(256 << 10)).map { _ in UInt8.random(in: 0...255, using: &generator) })
            let options = test.runOptions + ["--network", "none"]
            let echoed = try await test.podman(["run", "--rm", "-i"] + options + [image, "-c", "cat; echo after-eof"], stdin: input)
            #expect(echoed.status == 0, "\(echoed.stderr)")
            #expect(echoed.stdout.count == input.count + 10, "\(echoed.stdout.count) bytes back for \(input.count)")
            #expect(SHA256Digest.of(echoed.stdout) == SHA256Digest.of(input + Data("after-eof\n".utf8)), "the bytes sent, unchanged, then the end of file")
            let ignored = try await test.podman(["run", "--rm"] + options + [image, "-c", "cat; echo nothing"], stdin: Data("ignored".utf8))
            #expect(ignored.text == "nothing\n", "without -i the command's stdin is empty: \(ignored.text) \(ignored.stderr)")
            await test.runtime.expectNothingLeft()
        }
    }

    /// Prints what it is sent: USR1 is noted, TERM ends it with 7.
    static let trapping = "trap 'echo got usr1' USR1; trap 'echo got term; exit 7' TERM; echo up; while true; do sleep 0.2; done"

    @Test("run -d: the container's pid is its anchor, in a mount namespace of its own, the supervisor its child; kill -s USR1 reaches the command, stop ends it by its TERM trap (status 7), logs has its lines, rm leaves nothing")
    func detached() async throws {
        try await RuntimeTest.with { test in
            let image = try await test.image()
            let started = try await test.podman(["run", "-d"] + test.runOptions + ["--network", "none", image, "-c", Self.trapping])
            #expect(started.status == 0, "\(started.stderr)")
            let id = started.text.trimmingCharacters(in: .whitespacesAndNewlines)
            try #require(id.count == 64 && id.allSatisfy(\.isHexDigit), "run -d prints the container's id: \(started.text) \(started.stderr)")
            #expect(try await test.logs(of: id, contain: "up\n"), "the command never started")

            let inspected = try await test.podman(["inspect", "--format", "{{.State.Status}} {{.State.Pid}}", id])
            let fields = inspected.text.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            #expect(fields.first == "running", "\(inspected.text) \(inspected.stderr)")
            let pid = Int32(fields.last ?? "") ?? 0
            // The pid is the container's anchor (its mount namespace has the container's root as
            // its root), whose one child is the supervisor.
            let name = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .newlines)
            #expect(name == "vmf-anchor", "pid \(pid) is not the container's anchor: \(name ?? "gone")")
            let children = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8))?.split(separator: " ").compactMap { Int32($0) } ?? []
            let supervisor = String(decoding: FileManager.default.contents(atPath: "/proc/\(children.first ?? 0)/cmdline") ?? Data(), as: UTF8.self)
            #expect(children.count == 1 && supervisor.contains("vmfactory-runtime") && supervisor.contains("supervise"), "the anchor's child is not the supervisor: \(children) \(supervisor)")
            let root = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/root")
            #expect(root == "/", "the anchor's root, in its own namespace: \(root ?? "?")")
            let ownNamespace = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/mnt")
            #expect(ownNamespace != nil && ownNamespace != (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/mnt")), "the anchor has a mount namespace of its own")
            let state = try await test.runtime.call(["state", id])
            #expect(state.text.contains("\"status\" : \"running\""), "\(state.text) \(state.stderr)")

            let killed = try await test.podman(["kill", "--signal", "USR1", id])
            #expect(killed.status == 0, "\(killed.stderr)")
            #expect(try await test.logs(of: id, contain: "got usr1\n"), "USR1 did not reach the command")
            // A grace period longer than a guest slowed by the other suites needs to run its
            // trap: a SIGKILL after it would end the container with 137.
            let stopping = ContinuousClock.now
            let stopped = try await test.podman(["stop", "--time", "20", id])
            #expect(stopped.status == 0, "\(stopped.stderr)")
            #expect(ContinuousClock.now - stopping < .seconds(20), "stop waited for its grace period: TERM did not end the command")
            let status = try await test.podman(["inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", id])
            #expect(status.text == "exited 7\n", "\(status.text) \(status.stderr)")
            let waited = try await test.podman(["wait", id])
            #expect(waited.text == "7\n", "\(waited.text) \(waited.stderr)")
            let logs = try await test.podman(["logs", id])
            #expect(logs.text == "up\ngot usr1\ngot term\n", "\(logs.text) \(logs.stderr)")
            #expect(ContainerState.processStat(pid) == nil || ContainerState.processStat(pid)?.state == "Z", "the supervisor \(pid) outlived its container")

            let removed = try await test.podman(["rm", id])
            #expect(removed.status == 0, "\(removed.stderr)")
            await test.runtime.expectNothingLeft(mentioning: [id])
        }
    }

    @Test("a write in the container is podman's (diff: A /written.txt, cp), cp into it lands in it; rm -f of a running container is quick and leaves no supervisor, QEMU or virtiofsd")
    func writesAndForcedRemoval() async throws {
        try await RuntimeTest.with { test in
            let image = try await test.image()
            let dir = try TestSupport.temporaryDirectory()
            let started = try await test.podman(["run", "-d"] + test.runOptions + ["--network", "none", image, "-c", "mkdir /tmp; echo data > /written.txt; sync; echo written; sleep 1000"])
            #expect(started.status == 0, "\(started.stderr)")
            let id = started.text.trimmingCharacters(in: .whitespacesAndNewlines)
            try #require(!id.isEmpty, "\(started.stderr)")
            #expect(try await test.logs(of: id, contain: "written\n"), "the command never wrote")
            let diff = try await test.podman(["diff", id])
            #expect(diff.text.split(separator: "\n").contains("A /written.txt"), "\(diff.text) \(diff.stderr)")

            // podman cp works in the mount namespace of the container's pid (its anchor), whose
            // root is the container's.
            let copiedOut = try await test.podman(["cp", id + ":/written.txt", dir + "/copied.txt"])
            #expect(copiedOut.status == 0, "podman cp from the running container: \(copiedOut.stderr)")
            #expect((try? FileStore.readText(dir + "/copied.txt")) == "data\n")
            // A path in the container's /tmp that the host's /tmp does not have: where podman cp
            // puts the file shows whose files it writes.
            let sent = "/tmp/vmf-cp-\(UUID().uuidString.prefix(8).lowercased())"
            defer { unlink(sent) }
            try TestSupport.write("sent\n", to: dir + "/sent.txt")
            let copiedIn = try await test.podman(["cp", dir + "/sent.txt", id + ":" + sent])
            #expect(copiedIn.status == 0, "podman cp into the running container: \(copiedIn.stderr)")
            #expect(!FileStore.exists(sent), "podman cp into the container wrote the host's \(sent)")
            let changed = try await test.podman(["diff", id])
            #expect(changed.text.split(separator: "\n").contains("A \(sent)"), "\(changed.text)")
            // The guest sees what was copied in.
            let seen = try await test.podman(["exec", id, "cat", sent])
            #expect(seen.status == 0 && seen.text == "sent\n", "\(seen.text) \(seen.stderr)")

            let removing = ContinuousClock.now
            let removed = try await test.podman(["rm", "--force", id])
            let took = ContinuousClock.now - removing
            #expect(removed.status == 0, "\(removed.stderr)")
            // podman's stop timeout is 10 s: a container that outlived its TERM would take that.
            #expect(took < .seconds(10), "rm -f took \(took)")
            let left = try await test.podman(["ps", "--all", "--quiet", "--no-trunc"])
            #expect(!left.text.contains(id), "\(left.text)")
            await test.runtime.expectNothingLeft(mentioning: [id])
            for helper in ["qemu-system", "virtiofsd", "virtfs-proxy-helper"] {
                let running = ((try? TestSupport.processes(matching: helper)) ?? []).filter { $0.contains(test.runtime.folder) || $0.contains(id) }
                #expect(running.isEmpty, "\(helper) of the removed container still runs: \(running)")
            }
        }
    }

    @Test("-d on podman's network with -p and -v: curl reaches busybox httpd in the VM, exec with its status and a pipe, the volume read and written, pause halts the VM and unpause resumes it, exec -it and run -it under script(1)", .needsTool("curl"), .needsTool("script"))
    func serviceExecVolumePause() async throws {
        try await RuntimeTest.with { test in
            let image = try await test.image()
            let dir = try TestSupport.temporaryDirectory()
            let shared = dir + "/shared"
            try FileStore.createDirectory(shared)
            try TestSupport.write("from the host\n", to: shared + "/in.txt")
            let port = try LocalRegistry.freePort()
            let before = try await HostNetwork.snapshot()
            var after = before
            do {
                let started = try await test.podman(["run", "-d"] + test.runOptions + [
                    "-p", "127.0.0.1:\(port):80", "-v", "\(shared):/data", image,
                    "-c", "mkdir -p /www; echo served from the VM > /www/index.html; httpd -f -p 80 -h /www",
                ])
                #expect(started.status == 0, "\(started.stderr)")
                let id = started.text.trimmingCharacters(in: .whitespacesAndNewlines)
                try #require(!id.isEmpty, "\(started.stderr)")
                // Through podman's port mapping to the container's address, which the VM holds.
                var served = ""
                let deadline = ContinuousClock.now + .seconds(120)
                while ContinuousClock.now < deadline {
                    let fetched = try await TestSupport.run("curl", ["-s", "--max-time", "5", "http://127.0.0.1:\(port)/"])
                    served = fetched.output
                    if served == "served from the VM\n" { break }
                    try await Task.sleep(for: .milliseconds(500))
                }
                #expect(served == "served from the VM\n", "curl through -p 127.0.0.1:\(port):80 got '\(served)'")

                let exec = try await test.podman(["exec", id, "sh", "-c", "cat /data/in.txt; echo from the guest > /data/out.txt; echo err >&2; exit 4"])
                #expect(exec.status == 4 && exec.text == "from the host\n" && exec.stderr == "err\n", "\(exec.text) \(exec.stderr)")
                #expect((try? FileStore.readText(shared + "/out.txt")) == "from the guest\n", "the volume's write reached the host")
                let piped = try await test.podman(["exec", "-i", id, "cat"], stdin: Data("through exec -i\n".utf8))
                #expect(piped.status == 0 && piped.text == "through exec -i\n", "\(piped.stderr)")
                let missing = try await test.podman(["exec", id, "no-such-program"])
                #expect(missing.status == 127, "\(missing.stderr)")

                // A real pause: the guest's clock stops with its vCPUs. Between two readings of it,
                // the guest counts at most the host's time between the two execs' starts and ends
                // less the 3 s paused (a loaded host only makes its own count longer).
                let clock = "cat /proc/uptime | cut -d' ' -f1"
                func uptime() async throws -> Double {
                    Double(try await test.podman(["exec", id, "sh", "-c", clock]).text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
                }
                let wallStart = ContinuousClock.now
                let first = try await uptime()
                let paused = try await test.podman(["pause", id])
                #expect(paused.status == 0, "\(paused.stderr)")
                let status = try await test.podman(["inspect", "--format", "{{.State.Status}}", id])
                #expect(status.text.trimmingCharacters(in: .whitespacesAndNewlines) == "paused", "\(status.text)")
                try await Task.sleep(for: .seconds(3))
                let resumed = try await test.podman(["unpause", id])
                #expect(resumed.status == 0, "\(resumed.stderr)")
                let second = try await uptime()
                let wall = (ContinuousClock.now - wallStart).seconds
                #expect(second > first, "the guest's clock runs again after unpause: \(first) then \(second)")
                #expect(second - first <= wall - 2, "the guest's clock stood still while paused: it counted \(second - first) s of the host's \(wall) s")

                // A terminal, as a user types into it.
                // (The command is given, not typed: keys typed before the exec's terminal is up are lost.)
                let typed = try await TestSupport.execute(
                    "script", ["-qec", "podman --root \(test.store.folder)/podman/storage --runroot \(test.store.folder)/podman/run exec -it \(id) sh -c 'tty; exit 6'", "/dev/null"],
                    environment: test.store.environment
                )
                #expect(typed.status == 6 && typed.text.contains("/dev/pts/"), "\(typed.text) \(typed.stderr)")
                // And the container's own process on a terminal (the console socket of create).
                let options = test.runOptions.map { "'\($0)'" }.joined(separator: " ")
                let terminal = try await TestSupport.execute(
                    "script", ["-qec", "podman --root \(test.store.folder)/podman/storage --runroot \(test.store.folder)/podman/run run --rm -it \(options) --network none \(image) -c 'tty; exit 5'", "/dev/null"],
                    environment: test.store.environment
                )
                #expect(terminal.status == 5 && terminal.text.contains("/dev/pts/"), "\(terminal.text) \(terminal.stderr)")

                let removed = try await test.podman(["rm", "--force", id])
                #expect(removed.status == 0, "\(removed.stderr)")
                after = try await HostNetwork.snapshot()
                let settled = ContinuousClock.now + .seconds(15)
                while !after.containerLeftovers(since: before).isEmpty, ContinuousClock.now < settled {
                    try await Task.sleep(for: .milliseconds(200))
                    after = try await HostNetwork.snapshot()
                }
            } catch {
                await (try? await HostNetwork.snapshot())?.undo(since: before)
                throw error
            }
            await after.undo(since: before)
            await test.runtime.expectNothingLeft()
        }
    }

    @Test("--platform linux/s390x on this x86_64 host: the image's s390x programs run in an s390x VM, its root over 9p through virtfs-proxy-helper, and podman sees its writes", .needsTool("qemu-system-s390x"))
    func foreignArchitecture() async throws {
        try await RuntimeTest.with { test in
            let reference = try await RunImages.shared(for: .s390x).plain
            let layout = reference.dropFirst("oci:".count), tag = reference.split(separator: ":").last ?? ""
            let copy = test.runtime.folder + "/s390x-layout"
            try FileManager.default.copyItem(atPath: String(layout.dropLast(tag.count + 1)), toPath: copy)
            let pulled = try await test.podman(["pull", "--quiet", "--platform", "linux/s390x", "oci:\(copy):\(tag)"])
            #expect(pulled.status == 0, "\(pulled.stderr)")
            let image = pulled.text.trimmingCharacters(in: .whitespacesAndNewlines)
            let run = try await test.podman(["run", "-d", "--platform", "linux/s390x"] + test.runOptions + ["--network", "none", image, "-c", "uname -m; echo s390x > /arch.txt; sync; sleep 1000"])
            let id = run.text.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(run.status == 0 && !id.isEmpty, "\(run.stderr)")
            #expect(try await test.logs(of: id, contain: "s390x\n"), "uname -m in the container")
            let diff = try await test.podman(["diff", id])
            #expect(diff.text.split(separator: "\n").contains("A /arch.txt"), "\(diff.text)")
            let processes = try await test.runtime.call(["ps", id])
            #expect(processes.text.contains("qemu-system-s39") && processes.text.contains("virtfs-proxy-he"), "\(processes.text)")
            let removed = try await test.podman(["rm", "--force", id])
            #expect(removed.status == 0, "\(removed.stderr)")
            await test.runtime.expectNothingLeft()
        }
    }

    @Test("--memory 256m and --cpus 2 are the VM's: its MemTotal between 200 and 256 MiB, nproc 2")
    func limits() async throws {
        try await RuntimeTest.with { test in
            let image = try await test.image()
            let run = try await test.podman(["run", "--rm"] + test.runOptions + ["--network", "none", "--memory", "256m", "--cpus", "2", image, "-c", "grep MemTotal /proc/meminfo; nproc"])
            #expect(run.status == 0, "\(run.stderr)")
            let lines = run.text.split(separator: "\n")
            let kiB = lines.first.flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") } ?? 0
            #expect(kiB > 200 << 10 && kiB < 256 << 10, "MemTotal \(kiB) kB for --memory 256m: \(run.text)")
            #expect(lines.last == "2", "nproc for --cpus 2: \(run.text)")
            await test.runtime.expectNothingLeft()
        }
    }

    @Test("--read-only: the root refuses writes; podman's tmpfs mounts (/tmp, /run, /var/tmp) and a --tmpfs take them")
    func readOnly() async throws {
        try await RuntimeTest.with { test in
            let image = try await test.image()
            let script = "echo x > /in-root 2>/dev/null && echo root-written; for d in /tmp /run /var/tmp /scratch; do echo x > $d/f && echo $d-written; done"
            let run = try await test.podman(["run", "--rm"] + test.runOptions + ["--network", "none", "--read-only", "--tmpfs", "/scratch:size=8m", image, "-c", script])
            #expect(run.status == 0, "\(run.stderr)")
            #expect(run.text == "/tmp-written\n/run-written\n/var/tmp-written\n/scratch-written\n", "\(run.text) \(run.stderr)")
            await test.runtime.expectNothingLeft()
        }
    }

    @Test("runc's calls on a bundle, without podman: create hands over a pid that outlives it, state, start, the container's output and status, stopped, delete, delete of an unknown id")
    func runcCalls() async throws {
        try await RuntimeTest.with { test in
            let dir = try TestSupport.temporaryDirectory()
            let layout = try await RunImages.shared(for: .x86_64).plain
            let bundle = dir + "/bundle"
            try await ImageFixtures.umoci(["unpack", "--image", String(layout.dropFirst("oci:".count)), bundle])
            var config = try #require(try JSONSerialization.jsonObject(with: FileStore.readData(bundle + "/config.json")) as? [String: Any])
            var process = try #require(config["process"] as? [String: Any], "umoci's config.json has a process")
            process["args"] = ["/bin/sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 5"]
            process["terminal"] = false
            config["process"] = process
            try TestSupport.write(try JSONSerialization.data(withJSONObject: config), to: bundle + "/config.json")

            // conmon's part: a child subreaper that adopts the container's pid once create has
            // ended, and sees its exit status.
            let subreaper = try await TestSupport.compileFixture("subreaper", for: .x86_64, into: dir)
            let reaped = dir + "/reaped", pidFile = dir + "/container.pid", log = dir + "/runtime.log"
            let id = "direct-" + UUID().uuidString.prefix(8).lowercased()
            let create = Command(subreaper, [reaped, TestSupport.runtimeExecutable] + test.runtime.globalFlags + [
                "--log", log, "--log-format", "json", "create", "--bundle", bundle, "--pid-file", pidFile, id,
            ])
            let child = try await ChildProcess.spawn(create, environment: TestSupport.environment, stdin: .null, stdout: .pipe, stderr: .pipe)
            defer { child.signalLeader(SIGKILL) }
            // The subreaper waits for everything create left: a helper that never ends would
            // hold the test forever.
            let watchdog = Task {
                try await Task.sleep(for: .seconds(300))
                test.runtime.endProcesses()
                child.signalLeader(SIGKILL)
            }
            defer { watchdog.cancel() }
            async let stdout = PipeReader.readAll(child.stdout!)
            async let stderr = PipeReader.readAll(child.stderr!)
            func reports() -> [(pid: Int32, status: Int32)] {
                ((try? FileStore.readText(reaped)) ?? "").split(separator: "\n").compactMap { line in
                    let fields = line.split(separator: " ").compactMap { Int32($0) }
                    return fields.count == 2 ? (fields[0], fields[1]) : nil
                }
            }
            // create ends once the VM has booted and waits for start: the first process reaped.
            #expect(await TestSupport.eventually(within: 300) { !reports().isEmpty }, "create did not end")
            let created = try #require(reports().first)
            #expect(created.status == 0, "create: \((try? FileStore.readText(log)) ?? "")")
            let pid = try #require(Int32((try? FileStore.readText(pidFile)) ?? ""), "create wrote no pid file")
            #expect(pid != created.pid)
            let parent = ((try? FileStore.readText("/proc/\(pid)/status")) ?? "").split(separator: "\n").first { $0.hasPrefix("PPid:") }
            #expect(parent?.split(separator: "\t").last.map(String.init) == String(child.pid), "the container's pid \(pid) was not adopted by create's subreaper \(child.pid): \(parent ?? "gone")")

            func state() async throws -> [String: Any] {
                let state = try await test.runtime.call(["state", id])
                #expect(state.status == 0, "\(state.stderr)")
                return try #require(try JSONSerialization.jsonObject(with: state.stdout) as? [String: Any], "state prints JSON: \(state.text)")
            }
            let createdState = try await state()
            #expect(createdState["status"] as? String == "created" && createdState["pid"] as? Int == Int(pid) && createdState["id"] as? String == id, "\(createdState)")
            #expect(createdState["bundle"] as? String == bundle && createdState["ociVersion"] is String, "\(createdState)")

            let started = try await test.runtime.call(["start", id])
            #expect(started.status == 0, "\(started.stderr)")
            let out = await stdout, err = await stderr
            #expect(await child.wait() == .exited(0))
            #expect(String(decoding: out, as: UTF8.self) == "to-stdout\n", "the container's stdout is create's")
            #expect(String(decoding: err, as: UTF8.self) == "to-stderr\n", "the container's stderr is create's, with nothing of the runtime's")
            #expect(reports().contains { $0.pid == pid && $0.status == 5 }, "the container's pid exits with the command's status: \(reports())")

            let stoppedState = try await state()
            #expect(stoppedState["status"] as? String == "stopped" && stoppedState["pid"] as? Int == 0, "\(stoppedState)")
            let deleted = try await test.runtime.call(["delete", id])
            #expect(deleted.status == 0, "\(deleted.stderr)")
            #expect(!FileStore.exists(test.runtime.state + "/" + id), "delete leaves the container's state")
            let gone = try await test.runtime.call(["state", id])
            #expect(gone.status != 0 && gone.stderr.contains("does not exist"), "\(gone.status) \(gone.stderr)")
            let unknown = try await test.runtime.call(["delete", "never-created"])
            #expect(unknown.status == 0, "delete of an unknown id succeeds, as runc's: \(unknown.stderr)")
            let again = try await test.runtime.call(["delete", "--force", id])
            #expect(again.status == 0, "a second delete succeeds: \(again.stderr)")
            await test.runtime.expectNothingLeft(mentioning: [id])
        }
    }

    enum BadBundle: String, CaseIterable, Sendable {
        case notJSON = "config.json is not JSON"
        case noRoot = "the root folder is missing"
        case newerSpec = "ociVersion 2.0.0"
        case unknownUser = "the process names a user the image lacks"
    }

    @Test("a bad bundle: create exits non-zero, says why in its JSON log (as docker reads it), and leaves no process and no state", arguments: BadBundle.allCases)
    func badBundle(_ bad: BadBundle) async throws {
        try await RuntimeTest.with { test in
            let bundle = try TestSupport.temporaryDirectory("bundle")
            let config = try TestSupport.temporaryDirectory() + "/config.json"
            func valid(version: String) -> String {
                #"{"ociVersion": "\#(version)", "process": {"user": {"uid": 0, "gid": 0}, "args": ["/bin/true"], "cwd": "/"}, "root": {"path": "rootfs"}}"#
            }
            let problem: String
            switch bad {
            case .notJSON:
                try TestSupport.write(#"{"ociVersion": "1.0.2", "process": "#, to: config)
                problem = "\(bundle)/config.json is not an OCI runtime config: The given data was not valid JSON"
            case .noRoot:
                try TestSupport.write(valid(version: "1.0.2"), to: config)
                problem = "the bundle's root \(bundle)/rootfs is not a folder"
            case .newerSpec:
                try TestSupport.write(valid(version: "2.0.0"), to: config)
                problem = "\(bundle)/config.json is for OCI runtime spec 2.0.0; vmfactory-runtime reads 1.x"
            case .unknownUser:
                try TestSupport.write(valid(version: "1.0.2").replacingOccurrences(of: #""gid": 0}"#, with: #""gid": 0, "username": "nosuchuser"}"#), to: config)
                problem = "the process's user nosuchuser is not in the image's /etc/passwd"
            }
            try FileStore.rename(config, to: bundle + "/config.json")
            if bad != .noRoot { try FileStore.createDirectory(bundle + "/rootfs") }

            let log = bundle + "/log.json", pidFile = bundle + "/container.pid"
            let id = "bad-" + UUID().uuidString.prefix(8).lowercased()
            let create = try await test.runtime.call(
                ["--log", log, "--log-format", "json", "create", "--bundle", bundle, "--pid-file", pidFile, id], environment: TestSupport.environment
            )
            #expect(create.status != 0, "create of a bundle whose \(bad.rawValue) succeeded")
            #expect(create.text.isEmpty)
            let lines = ((try? FileStore.readText(log)) ?? "").split(separator: "\n")
            let errors = lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }.filter { $0["level"] as? String == "error" }
            #expect(errors.count == 1, "one error in the log: \(lines)")
            let message = errors.first?["msg"] as? String ?? ""
            #expect(message.contains(problem), "the log says what is wrong (\(problem)): \(message)")
            #expect(create.stderr.contains(problem), "\(create.stderr)")
            #expect(!FileStore.exists(pidFile), "create of a bad bundle wrote a pid file")
            let state = try await test.runtime.call(["state", id])
            #expect(state.status != 0, "a container was left: \(state.text)")
            await test.runtime.expectNothingLeft(mentioning: [bundle])
        }
    }
}
