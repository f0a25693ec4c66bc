import Foundation
import Testing
@testable import VMFactoryCore
@testable import VMFactoryRuntime

/// vmfactory-runtime as docker (dockerd through containerd's runc shim) and containerd (ctr
/// with the runc shim's `--runc-binary`) call it: real daemons from Debian, started by the
/// test in its own folders, on their own sockets, with no bridge or iptables of their own.
@Suite(
    "vmfactory-runtime under docker and containerd",
    .tags(.boot), .scoped, .needsRoot, .needsPinnedKernel,
    .needsTool("dockerd"), .needsTool("containerd"), .needsTool("ctr"), .needsTool("skopeo"), .needsTool("umoci"), .needsTool("qemu-system-x86_64")
)
struct EngineBootTests {
    /// The runtime behind a wrapper that gives it its configuration (the engines pass only
    /// their own flags): kernels from the shared build, runs' folders under a short path.
    struct Runtime {
        var wrapper: String
        var runs: String

        static func make(in dir: String) async throws -> Runtime {
            let built = try await SharedBuild.shared.get()
            let runs = "/tmp/vmf-rt-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            try FileStore.createDirectory(runs)
            let config = dir + "/runtime.json"
            try TestSupport.write(#"{"outputDirectory": "\#(built.output)", "runDirectory": "\#(runs)"}"#, to: config)
            let binary = (TestSupport.executable as NSString).deletingLastPathComponent + "/vmfactory-runtime"
            let wrapper = dir + "/vmfactory-runtime"
            try TestSupport.write("#!/bin/sh\nexec \(binary) --config \(config) \"$@\"\n", to: wrapper)
            chmod(wrapper, 0o755)
            return Runtime(wrapper: wrapper, runs: runs)
        }

        /// No QEMU, virtiofsd or proxy helper of this runtime's runs is left, and no run folder.
        func expectNothingLeft(sourceLocation: SourceLocation = #_sourceLocation) async {
            let gone = await TestSupport.eventually(within: 10) { ((try? TestSupport.processes(matching: runs)) ?? []).isEmpty }
            #expect(gone, "processes of \(runs) left: \((try? TestSupport.processes(matching: runs)) ?? [])", sourceLocation: sourceLocation)
            let left = ((try? FileManager.default.contentsOfDirectory(atPath: runs + "/runs")) ?? []).filter { !$0.hasPrefix(".") }
            #expect(left.isEmpty, "run folders left: \(left)", sourceLocation: sourceLocation)
        }
    }

    /// A command's status and output, run to its end (`TestSupport.execute`).
    static func run(_ executable: String, _ arguments: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
        let result = try await TestSupport.execute(executable, arguments, environment: TestSupport.environment)
        return (result.status, result.text, result.stderr)
    }

    /// A daemon started for the test, stopped with SIGTERM (then SIGKILL) at the end.
    static func daemon(_ executable: String, _ arguments: [String], log: String) async throws -> ChildProcess {
        let fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        defer { if fd >= 0 { close(fd) } }
        let command = Command(executable, arguments)
        return try await ChildProcess.spawn(command, environment: command.environment(on: TestSupport.environment), stdout: .descriptor(fd), stderr: .descriptor(fd))
    }

    /// The run tests' busybox image (Entrypoint /bin/sh) as a docker archive, for docker load
    /// and ctr import.
    static func archive(in dir: String) async throws -> String {
        let images = try await RunImages.shared(for: .x86_64)
        let archive = dir + "/box.tar"
        _ = try await TestSupport.runner.runChecked(Command("skopeo", ["copy", "-q", images.plain, "docker-archive:\(archive):box:latest"]), what: "making the docker archive")
        return archive
    }

    @Test("docker: run --rm prints and exits with the command's status; a missing program is 127; -d, exec with its status, stop with a trapped TERM; nothing left")
    func docker() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let runtime = try await Runtime.make(in: dir)
        // Under /tmp: dockerd's and containerd's socket paths are limited to 108 bytes.
        let home = "/tmp/vmf-docker-\(getpid())"
        try? FileStore.removeTree(home)
        try FileStore.createDirectory(home)
        let socket = "unix://\(home)/docker.sock"
        let dockerd = try await Self.daemon("dockerd", [
            "--data-root", home + "/data", "--exec-root", home + "/exec", "--host", socket, "--pidfile", home + "/docker.pid",
            "--bridge", "none", "--iptables=false", "--ip6tables=false", "--add-runtime", "vmf=\(runtime.wrapper)",
        ], log: dir + "/dockerd.log")
        defer {
            dockerd.terminate(grace: .seconds(10))
            try? FileStore.removeTree(home)
            try? FileStore.removeTree(runtime.runs)
        }
        let up = await TestSupport.eventually(within: 60) { FileStore.exists(home + "/docker.sock") }
        #expect(up, "dockerd did not start: \((try? FileStore.readText(dir + "/dockerd.log")) ?? "")")
        guard up else { return }
        func docker(_ arguments: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await Self.run("docker", ["-H", socket] + arguments)
        }
        try await Task.sleep(for: .seconds(1))
        let loaded = try await docker(["load", "-i", try await Self.archive(in: dir)])
        #expect(loaded.status == 0, "\(loaded.stderr)")

        let hi = try await docker(["run", "--rm", "--runtime", "vmf", "box:latest", "-c", "echo hi from docker; exit 3"])
        #expect(hi.status == 3 && hi.stdout == "hi from docker\n", "\(hi)")
        let missing = try await docker(["run", "--rm", "--runtime", "vmf", "--entrypoint", "/bin/nope", "box:latest"])
        #expect(missing.status == 127 && missing.stderr.contains("no such file or directory"), "\(missing)")

        let started = try await docker(["run", "-d", "--runtime", "vmf", "box:latest", "-c", "trap 'echo got term; exit 7' TERM; echo up; while true; do sleep 0.2; done"])
        let id = started.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(started.status == 0 && !id.isEmpty, "\(started)")
        defer { Task { _ = try? await docker(["rm", "-f", id]) } }
        let exec = try await docker(["exec", id, "sh", "-c", "echo in exec; exit 5"])
        #expect(exec.status == 5 && exec.stdout == "in exec\n", "\(exec)")
        let stop = try await docker(["stop", "-t", "10", id])
        #expect(stop.status == 0, "\(stop)")
        let code = try await docker(["inspect", "--format", "{{.State.ExitCode}}", id])
        #expect(code.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "7", "\(code)")
        let logs = try await docker(["logs", id])
        #expect(logs.stdout == "up\ngot term\n", "\(logs)")
        _ = try await docker(["rm", id])
        await runtime.expectNothingLeft()
    }

    @Test("containerd: ctr run with the runc shim and --runc-binary prints and exits with the container's status")
    func containerd() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let runtime = try await Runtime.make(in: dir)
        let home = "/tmp/vmf-containerd-\(getpid())"
        try? FileStore.removeTree(home)
        try FileStore.createDirectory(home)
        let socket = home + "/containerd.sock"
        try TestSupport.write("""
            version = 2
            root = "\(home)/root"
            state = "\(home)/state"
            [grpc]
              address = "\(socket)"
            """, to: dir + "/config.toml")
        let containerd = try await Self.daemon("containerd", ["--config", dir + "/config.toml"], log: dir + "/containerd.log")
        defer {
            containerd.terminate(grace: .seconds(10))
            try? FileStore.removeTree(home)
            try? FileStore.removeTree(runtime.runs)
        }
        let up = await TestSupport.eventually(within: 60) { FileStore.exists(socket) }
        #expect(up, "containerd did not start: \((try? FileStore.readText(dir + "/containerd.log")) ?? "")")
        guard up else { return }
        func ctr(_ arguments: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await Self.run("ctr", ["--address", socket] + arguments)
        }
        let imported = try await ctr(["images", "import", try await Self.archive(in: dir)])
        #expect(imported.status == 0, "\(imported)")
        let name = "vmf-\(getpid())"
        let run = try await ctr([
            "run", "--rm", "--runtime", "io.containerd.runc.v2", "--runc-binary", runtime.wrapper,
            "docker.io/library/box:latest", name, "/bin/sh", "-c", "echo hi from containerd; uname -m; exit 4",
        ])
        #expect(run.status == 4 && run.stdout == "hi from containerd\nx86_64\n", "\(run)")
        await runtime.expectNothingLeft()
    }

    @Test("a container's annotation names a published kernel image: the runtime pulls and verifies it, and boots it with no kernel in its output folder; create, state, start, stopped, delete")
    func publishedKernel() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let built = try await SharedBuild.shared.get()
        let published = try await TestSupport.runCLI([
            "publish", "--recipe", "container", "--target", "x86_64", "--to", "oci:\(dir)/kernels:v1", "--cache-dir", TestSupport.sharedCache, "--output-dir", built.output,
        ])
        #expect(published.status == 0, "\(published.stderr)")
        // A runtime whose output folder is empty: the kernel can only come from the image.
        let empty = dir + "/no-outputs"
        try FileStore.createDirectory(empty)
        let runs = "/tmp/vmf-rt-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileStore.createDirectory(runs)
        defer { try? FileStore.removeTree(runs) }
        try TestSupport.write(#"{"outputDirectory": "\#(empty)", "runDirectory": "\#(runs)"}"#, to: dir + "/runtime.json")
        let runtime = (TestSupport.executable as NSString).deletingLastPathComponent + "/vmfactory-runtime"
        let flags = ["--root", dir + "/state", "--config", dir + "/runtime.json", "--log", dir + "/log.json", "--log-format", "json"]

        let layout = try await RunImages.shared(for: .x86_64).plain
        let bundle = dir + "/bundle"
        _ = try await TestSupport.runner.runChecked(Command("umoci", ["unpack", "--image", String(layout.dropFirst("oci:".count)), bundle]), what: "unpacking the image")
        var config = try #require(try JSONSerialization.jsonObject(with: FileStore.readData(bundle + "/config.json")) as? [String: Any])
        var process = try #require(config["process"] as? [String: Any])
        process["args"] = ["/bin/sh", "-c", "uname -r > /kernel.txt"]
        process["terminal"] = false
        config["process"] = process
        config["annotations"] = [BundleRun.kernelAnnotation: "oci:\(dir)/kernels:v1"]
        try TestSupport.write(try JSONSerialization.data(withJSONObject: config), to: bundle + "/config.json")

        let id = "kernel-image-\(getpid())"
        // The container's stdio is create's: a file here, not a pipe that would stay open as
        // long as the container runs.
        let output = open(dir + "/container.out", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        defer { close(output) }
        let createCommand = Command(runtime, flags + ["create", "--bundle", bundle, "--pid-file", dir + "/pid", id])
        let creating = try await ChildProcess.spawn(createCommand, environment: createCommand.environment(on: TestSupport.environment), stdout: .descriptor(output), stderr: .descriptor(output))
        let created = await creating.wait()
        #expect(created == .exited(0), "\((try? FileStore.readText(dir + "/container.out")) ?? "") \((try? FileStore.readText(dir + "/log.json")) ?? "")")
        let state = try await Self.run(runtime, flags + ["state", id])
        #expect(state.stdout.contains("\"status\" : \"created\""), "\(state.stdout)")
        let started = try await Self.run(runtime, flags + ["start", id])
        #expect(started.status == 0, "\(started.stderr)")
        let stopped = await TestSupport.eventually(within: 120) {
            FileStore.exists(bundle + "/rootfs/kernel.txt") && ((try? ContainerState.load(root: dir + "/state", id: id))??.currentStatus == .stopped)
        }
        #expect(stopped, "the container did not run to its end")
        #expect(((try? FileStore.readText(bundle + "/rootfs/kernel.txt")) ?? "").hasPrefix("6.1."), "the guest's kernel")
        let deleted = try await Self.run(runtime, flags + ["delete", id])
        #expect(deleted.status == 0, "\(deleted.stderr)")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: empty)) ?? []).isEmpty, "nothing was built into the output folder")
        let left = ((try? TestSupport.processes(matching: runs)) ?? [])
        #expect(left.isEmpty, "\(left)")
    }
}
