import Foundation
import Synchronization
import Testing
@testable import VMFactoryCore

extension TestSupport {
    /// Runs `executable ARGUMENTS` with exactly `environment`; `stdin` is written to it, then
    /// closed (else its stdin is /dev/null). stdout is kept as bytes: a container's output is
    /// compared byte for byte.
    static func execute(_ executable: String, _ arguments: [String], environment: [String: String], stdin: Data? = nil) async throws -> RunVM.Result {
        let command = Command(executable, arguments)
        let child = try await ChildProcess.spawn(command, environment: environment, stdin: stdin == nil ? .null : .pipe, stdout: .pipe, stderr: .pipe)
        if let stdin, let fd = child.stdin {
            Thread.detachNewThread {
                stdin.withUnsafeBytes { try? FileStore.writeAll(fd, $0, path: "stdin") }
                close(fd)
            }
        }
        async let out = PipeReader.readAll(child.stdout!)
        async let err = PipeReader.readAll(child.stderr!)
        let status: Int32 = switch await child.wait() {
        case .exited(let code): code
        case .signaled(let signal): 128 + signal
        }
        return RunVM.Result(status: status, stdout: await out, stderr: String(decoding: await err, as: UTF8.self))
    }

    /// A new folder under /tmp with a short path, `/tmp/PREFIX-PID-RANDOM`: podman refuses a run
    /// root of more than 50 characters, and a UNIX socket's path holds at most 107 bytes. Such
    /// folders of test processes that are gone are removed first, as `TestScope` does its own.
    static func shortFolder(_ prefix: String, sweep: (String) async -> Void = { _ in }) async throws -> String {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? [] where name.hasPrefix(prefix + "-") {
            guard let pid = name.dropFirst(prefix.count + 1).split(separator: "-").first.flatMap({ pid_t($0) }), pid != getpid() else { continue }
            if kill(pid, 0) != 0, errno == ESRCH {
                await sweep("/tmp/" + name)
                try? FileStore.removeTree("/tmp/" + name)
            }
        }
        let path = "/tmp/\(prefix)-\(getpid())-\(UUID().uuidString.prefix(8).lowercased())"
        try FileStore.createDirectory(path)
        return path
    }
}

/// podman with everything of its own: a storage, a run root, a folder for its locks, exit files
/// and events (`tmp_dir`, else /run/libpod, shared with every podman of the host) and a
/// containers.conf that works on this kind of host (podman's default ulimits exceed its hard
/// limits, and there is no systemd). One per suite, through the `.podman` trait, which removes
/// it with every container left in it when the suite ends.
final class PodmanStore: Sendable {
    @TaskLocal static var current: PodmanStore?

    let folder: String
    let environment: [String: String]
    /// The busybox image of the run suites (`RunImages`), under a name of its own.
    static let imageName = "localhost/vmfactory-box:latest"
    private let loaded = Mutex<Task<String, any Error>?>(nil)

    init(folder: String) throws {
        self.folder = folder
        try TestSupport.write("""
            [containers]
            default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
            [engine]
            cgroup_manager = "cgroupfs"
            events_logger = "file"
            tmp_dir = "\(folder)/podman/tmp"
            [network]
            # The backend the tests clean up after (see HostNetwork); podman would pick netavark
            # when both are installed.
            network_backend = "cni"

            """, to: folder + "/containers.conf")
        var environment = TestSupport.environment
        environment["CONTAINERS_CONF"] = folder + "/containers.conf"
        self.environment = environment
    }

    static func make() async throws -> PodmanStore {
        let folder = try await TestSupport.shortFolder("vmf-pm") { stale in
            // A test process killed part-way may have left containers running in its store.
            if FileStore.isRegularFile(stale + "/containers.conf") { await (try? PodmanStore(folder: stale))?.removeContainers() }
        }
        return try PodmanStore(folder: folder)
    }

    /// `podman ARGUMENTS` on this store.
    func podman(_ arguments: [String], stdin: Data? = nil) async throws -> RunVM.Result {
        try await TestSupport.execute(
            "podman", ["--root", folder + "/podman/storage", "--runroot", folder + "/podman/run"] + arguments,
            environment: environment, stdin: stdin
        )
    }

    /// The image, loaded once: the run suites' plain busybox image (Entrypoint /bin/sh), made by
    /// umoci as an OCI layout, pulled from a copy and tagged (podman names what it pulls from
    /// a layout after its path, and refuses the capitals of the test process's folder).
    func image() async throws -> String {
        let task = loaded.withLock { task in
            if let task { return task }
            let made = Task {
                let reference = try await RunImages.shared(for: .x86_64).plain
                let layout = reference.dropFirst("oci:".count), tag = reference.split(separator: ":").last ?? ""
                let copy = folder + "/layout"
                try FileManager.default.copyItem(atPath: String(layout.dropLast(tag.count + 1)), toPath: copy)
                let pulled = try await podman(["pull", "--quiet", "oci:\(copy):\(tag)"])
                guard pulled.status == 0 else { throw VMFactoryError(.processFailed, "podman pull oci:\(copy):\(tag) failed: \(pulled.stderr)") }
                let id = pulled.text.trimmingCharacters(in: .whitespacesAndNewlines)
                let tagged = try await podman(["tag", id, Self.imageName])
                guard tagged.status == 0 else { throw VMFactoryError(.processFailed, "podman tag failed: \(tagged.stderr)") }
                return Self.imageName
            }
            task = made
            return made
        }
        return try await task.value
    }

    /// Every container of this store, removed (running ones killed at once).
    func removeContainers() async {
        _ = try? await podman(["rm", "--all", "--force", "--time", "0"])
    }

    func remove() async {
        await removeContainers()
        try? FileStore.removeTree(folder)
    }
}

/// The suite's podman store, made before its first test and removed after its last.
struct PodmanScope: SuiteTrait, TestScoping {
    var isRecursive: Bool { false }

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        let store = try await PodmanStore.make()
        do {
            try await PodmanStore.$current.withValue(store) { try await function() }
        } catch {
            await store.remove()
            throw error
        }
        await store.remove()
    }
}

extension Trait where Self == PodmanScope {
    /// A podman store of the suite's own (`PodmanStore.current`).
    static var podman: Self { PodmanScope() }
}

/// vmfactory-runtime installed for one test as an engine installs a runtime: a configuration
/// (the shared build's kernels, a run directory of its own), a state folder (`--root`), and a
/// wrapper script that podman calls with `--runtime` (podman passes a runtime no flags of its own
/// choosing, and calls kill, state and delete with no PATH: everything in it is absolute).
struct RuntimeInstall: Sendable {
    let folder: String
    var configuration: String { folder + "/runtime.json" }
    var wrapper: String { folder + "/runtime" }
    /// The containers' state (`--root`).
    var state: String { folder + "/state" }
    /// The runs' folders (the configuration's `runDirectory`).
    var runs: String { folder + "/runs" }
    /// runc's global flags, as docker's shim passes them, for this install.
    var globalFlags: [String] { ["--root", state, "--config", configuration] }

    /// A new install in `parent` (a short folder: the runs' sockets are below it). `probes` is the
    /// suite's folder for the KVM probe's answer: each run directory probes KVM once with a boot
    /// of several seconds (a guest that KVM stops, on this kind of host); the tests share it as
    /// the containers of one host share their run directory.
    static func make(in parent: String, probes: String) async throws -> RuntimeInstall {
        let built = try await SharedBuild.shared.get()
        let install = RuntimeInstall(folder: parent + "/rt-" + UUID().uuidString.prefix(8).lowercased())
        try FileStore.createDirectory(install.folder)
        try FileStore.createDirectory(install.state)
        try FileStore.createDirectory(probes)
        try FileManager.default.createSymbolicLink(atPath: install.folder + "/probes", withDestinationPath: probes)
        let configuration: [String: Any] = ["outputDirectory": built.output, "runDirectory": install.folder]
        try TestSupport.write(try JSONSerialization.data(withJSONObject: configuration, options: [.sortedKeys]), to: install.configuration)
        let quoted = ([TestSupport.runtimeExecutable] + install.globalFlags).map { "'\($0)'" }.joined(separator: " ")
        try TestSupport.write("#!/bin/sh\nexec \(quoted) \"$@\"\n", to: install.wrapper, mode: 0o755)
        return install
    }

    /// runc's call `vmfactory-runtime GLOBAL-FLAGS ARGUMENTS`; `environment` as the engine gives
    /// it (podman gives kill, state and delete only XDG_RUNTIME_DIR).
    func call(_ arguments: [String], environment: [String: String] = ["XDG_RUNTIME_DIR": "/run/user/0"]) async throws -> RunVM.Result {
        try await TestSupport.execute(TestSupport.runtimeExecutable, globalFlags + arguments, environment: environment)
    }

    /// No supervisor, QEMU, virtiofsd or conmon of this install is left (their command lines
    /// name its folder), nor anything mentioning `others` (a container's id), nor a run's folder
    /// or a container's state.
    func expectNothingLeft(mentioning others: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) async {
        for text in [folder] + others {
            let gone = await TestSupport.eventually(within: 15) { ((try? TestSupport.processes(matching: text)) ?? []).isEmpty }
            #expect(gone, "still running: \((try? TestSupport.processes(matching: text)) ?? [])", sourceLocation: sourceLocation)
        }
        let runs = ((try? FileManager.default.contentsOfDirectory(atPath: runs)) ?? []).filter { !$0.hasPrefix(".") }
        #expect(runs.isEmpty, "runs' folders left in \(self.runs): \(runs)", sourceLocation: sourceLocation)
        let states = (try? FileManager.default.contentsOfDirectory(atPath: state)) ?? []
        #expect(states.isEmpty, "containers' state left in \(state): \(states)", sourceLocation: sourceLocation)
    }

    /// Ends whatever of this install still runs: a test that fails half-way leaves no VM
    /// running into the next suites.
    func endProcesses() {
        for pid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let number = Int32(pid), let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"),
                  String(decoding: data, as: UTF8.self).contains(folder) else { continue }
            kill(number, SIGKILL)
        }
    }
}

/// What a test of the runtime suite works with: the suite's podman, a runtime install of its
/// own, and a label that every container it makes carries; at its end, passed or failed, those
/// containers are removed and nothing of the install is left running.
struct RuntimeTest: Sendable {
    let store: PodmanStore
    let runtime: RuntimeInstall
    let label: String

    /// `podman run`'s options for every container of the test.
    var runOptions: [String] { ["--runtime", runtime.wrapper, "--label", "vmfactory.test=" + label] }

    static func with(_ body: (RuntimeTest) async throws -> Void) async throws {
        let store = try #require(PodmanStore.current, "the suite has no podman store: give it the .podman trait")
        let runtime = try await RuntimeInstall.make(in: store.folder, probes: store.folder + "/probes")
        let test = RuntimeTest(store: store, runtime: runtime, label: URL(fileURLWithPath: runtime.folder).lastPathComponent)
        do {
            try await body(test)
        } catch {
            await test.cleanUp()
            throw error
        }
        await test.cleanUp()
    }

    func cleanUp() async {
        if let listed = try? await podman(["ps", "--all", "--quiet", "--no-trunc", "--filter", "label=vmfactory.test=" + label]) {
            let ids = listed.text.split(separator: "\n").map(String.init)
            if !ids.isEmpty { _ = try? await podman(["rm", "--force", "--time", "0"] + ids) }
        }
        runtime.endProcesses()
        try? FileStore.removeTree(runtime.folder)
    }

    func image() async throws -> String { try await store.image() }

    func podman(_ arguments: [String], stdin: Data? = nil) async throws -> RunVM.Result {
        try await store.podman(arguments, stdin: stdin)
    }

    /// Until `podman logs` of `container` holds `text` (two minutes at most: when the shared
    /// kernel is ready, every suite boots at once).
    func logs(of container: String, contain text: String) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(120)
        while ContinuousClock.now < deadline {
            if try await podman(["logs", container]).text.contains(text) { return true }
            // A podman call costs a tenth of a second of CPU: not too often.
            try await Task.sleep(for: .milliseconds(500))
        }
        return false
    }
}

/// What podman's default network changes on the host (CNI here): interfaces, iptables rules,
/// IPv4 forwarding, CNI's files and the named network namespaces. A container's own share of
/// it (a veth, a namespace, an address's lease, its rules) goes with the container; the first
/// use of the network on a host also leaves its bridge, CNI's chains, IPv4 forwarding and
/// CNI's files on purpose, which `undo(since:)` takes back.
struct HostNetwork: Equatable {
    var links: Set<String>
    /// `TOOL TABLE RULE` as iptables-save prints it, packet counts left out.
    var rules: Set<String>
    var forwarding: String
    var files: Set<String>

    static let folders = ["/var/lib/cni", "/etc/cni/net.d", "/run/netns"]
    static let tools = ["iptables", "ip6tables"]

    static func snapshot() async throws -> HostNetwork {
        let links = Set((try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/net")) ?? [])
        var rules = Set<String>()
        for tool in tools where TestSupport.hasTool(tool + "-save") {
            let saved = try await TestSupport.run(tool + "-save", [])
            var table = ""
            for line in saved.output.split(separator: "\n").map(String.init) {
                if line.hasPrefix("*") { table = String(line.dropFirst()) }
                guard line.hasPrefix(":") || line.hasPrefix("-") else { continue }
                // ":CHAIN POLICY [packets:bytes]": the counts change with traffic.
                let text = line.hasPrefix(":") ? line.split(separator: " ").prefix(2).joined(separator: " ") : line
                rules.insert("\(tool) \(table) \(text)")
            }
        }
        var files = Set<String>()
        for folder in folders where FileStore.isDirectory(folder) {
            files.insert(folder)
            for path in TestSupport.files(under: folder) { files.insert(folder + "/" + path) }
        }
        let forwarding = (try? FileStore.readText("/proc/sys/net/ipv4/ip_forward"))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        return HostNetwork(links: links, rules: rules, forwarding: forwarding, files: files)
    }

    /// What differs from `before`, a line each.
    func changes(since before: HostNetwork) -> [String] {
        var lines: [String] = []
        for (name, now, then) in [("interface", links, before.links), ("rule", rules, before.rules), ("file", files, before.files)] {
            lines += now.subtracting(then).sorted().map { "+ \(name) \($0)" }
            lines += then.subtracting(now).sorted().map { "- \(name) \($0)" }
        }
        if forwarding != before.forwarding { lines.append("net.ipv4.ip_forward \(before.forwarding) -> \(forwarding)") }
        return lines
    }

    /// What one container left that should have gone with it: an interface other than a
    /// bridge without ports (a veth), a named network namespace, a lease of an address, a
    /// rule for one address or one container.
    func containerLeftovers(since before: HostNetwork) -> [String] {
        var found = links.subtracting(before.links).filter { !Self.isEmptyBridge($0) }.map { "interface \($0)" }
        for path in files.subtracting(before.files).sorted() {
            let name = URL(fileURLWithPath: path).lastPathComponent
            // CNI's cached result for the container, and host-local's lease of its address.
            if path.hasPrefix("/run/netns/") || path.hasPrefix("/var/lib/cni/results/")
                || (path.hasPrefix("/var/lib/cni/networks/") && name.split(separator: ".").count == 4) {
                found.append("file \(path)")
            }
        }
        found += rules.subtracting(before.rules).filter { $0.contains("/32") || $0.contains("/128") || $0.contains("id: ") }.sorted().map { "rule \($0)" }
        return found
    }

    /// Takes back what the first use of podman's network left since `before`: its rules and
    /// chains, its bridges (only those without ports: a bridge in use is another podman's),
    /// CNI's files, IPv4 forwarding. A container's leftovers are not taken back: they are a
    /// failure to report (and, on a host shared with someone's podman, maybe theirs).
    func undo(since before: HostNetwork) async {
        let leftovers = Set(containerLeftovers(since: before))
        let added = rules.subtracting(before.rules).filter { !leftovers.contains("rule \($0)") }
        for rule in added.sorted() {
            let words = rule.split(separator: " ", maxSplits: 2).map(String.init)
            guard words.count == 3, words[2].hasPrefix("-A ") else { continue }
            _ = try? await TestSupport.run(words[0], ["-t", words[1], "-D"] + Self.arguments(of: String(words[2].dropFirst(3))))
        }
        for rule in added.sorted() {
            let words = rule.split(separator: " ").map(String.init)
            guard words.count >= 3, words[2].hasPrefix(":") else { continue }
            let chain = String(words[2].dropFirst())
            _ = try? await TestSupport.run(words[0], ["-t", words[1], "-F", chain])
            _ = try? await TestSupport.run(words[0], ["-t", words[1], "-X", chain])
        }
        for link in links.subtracting(before.links).sorted() where Self.isEmptyBridge(link) {
            _ = try? await TestSupport.run("ip", ["link", "delete", link])
        }
        for path in files.subtracting(before.files).sorted(by: >) where !leftovers.contains("file \(path)") {
            try? FileManager.default.removeItem(atPath: path)
        }
        if forwarding != before.forwarding {
            try? Data((before.forwarding + "\n").utf8).write(to: URL(fileURLWithPath: "/proc/sys/net/ipv4/ip_forward"))
        }
    }

    static func isEmptyBridge(_ link: String) -> Bool {
        FileStore.isDirectory("/sys/class/net/\(link)/bridge")
            && ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/net/\(link)/brif")) ?? []).isEmpty
    }

    /// A rule's words as iptables-save prints them: words in double quotes, `\"` inside.
    static func arguments(of rule: String) -> [String] {
        var words: [String] = []
        var word = ""
        var quoted = false, escaped = false, started = false
        for character in rule {
            if escaped {
                word.append(character)
                escaped = false
            } else if character == "\\" && quoted {
                escaped = true
            } else if character == "\"" {
                quoted.toggle()
                started = true
            } else if character == " " && !quoted {
                if started { words.append(word) }
                word = ""
                started = false
            } else {
                word.append(character)
                started = true
            }
        }
        if started { words.append(word) }
        return words
    }
}
