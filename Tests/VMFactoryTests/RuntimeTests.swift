import Foundation
import Testing
@testable import VMFactoryCore
@testable import VMFactoryImage
@testable import VMFactoryLifecycle
@testable import VMFactoryRun
@testable import VMFactoryRuntime

/// vmfactory-runtime's pieces that need no VM: runc's command line as the engines write it,
/// bundles read and refused, a bundle in a run's terms, the state it keeps.
@Suite("vmfactory-runtime: values", .tags(.unit), .scoped)
struct RuntimeTests {
    @Test("runc's command line: global flags before the command, --flag value and --flag=value, flags runc has and this runtime does not need taken")
    func commandLine() throws {
        // As docker's shim calls it.
        var line = try RuntimeCommandLine.parse(["--root", "/run/x/moby", "--log", "/b/log.json", "--log-format", "json", "create", "--bundle", "/b", "--pid-file", "/b/init.pid", "abc"])
        #expect(line.root == "/run/x/moby" && line.log == "/b/log.json" && line.logFormat == .json && line.command == "create")
        #expect(line.flag("bundle", "b") == "/b" && line.flag("pid-file") == "/b/init.pid")
        #expect(try line.containerID() == "abc")
        // As podman (through conmon) calls it, with a runc-only global flag and its own switches.
        line = try RuntimeCommandLine.parse(["--systemd-cgroup", "--log-format=json", "--log=/l", "exec", "--pid-file", "/p", "--process=/proc.json", "--detach", "--tty", "--console-socket", "/s", "id1"])
        #expect(line.systemdCgroup && line.logFormat == .json && line.log == "/l")
        #expect(line.flag("process", "p") == "/proc.json" && line.isSet("detach", "d") && line.isSet("tty") && line.flag("console-socket") == "/s")
        line = try RuntimeCommandLine.parse(["kill", "c1", "SIGUSR1"])
        #expect(line.positionals == ["c1", "SIGUSR1"] && line.root == "/run/vmfactory-runtime")
        line = try RuntimeCommandLine.parse(["delete", "--force", "c1"])
        #expect(line.isSet("force", "f"))
        #expect(try RuntimeCommandLine.parse(["--version"]).command == "--version")
        #expect(throws: VMFactoryError.self) { try RuntimeCommandLine.parse(["--bogus", "x", "state", "c"]) }
        #expect(throws: VMFactoryError.self) { try RuntimeCommandLine.parse(["--log-format", "xml", "state", "c"]) }
        #expect(throws: VMFactoryError.self) { try RuntimeCommandLine.parse(["state", "../escape"]).containerID() }
        #expect(throws: VMFactoryError.self) { try RuntimeCommandLine.parse(["state"]).containerID() }
    }

    /// A bundle with `config` as its config.json and a root folder.
    static func bundle(_ config: String, root: Bool = true) throws -> String {
        let dir = try TestSupport.temporaryDirectory("bundle")
        if root { try FileStore.createDirectory(dir + "/rootfs") }
        try TestSupport.write(config, to: dir + "/config.json")
        return dir
    }

    static let plain = """
        {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "hostname": "box",
         "process": {"terminal": false, "user": {"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 18},
                     "args": ["/bin/sh", "-c", "true"], "env": ["PATH=/bin", "A=1", "junk"], "cwd": "/srv",
                     "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NOT_A_CAP"], "effective": ["CAP_KILL"]},
                     "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 1024}, {"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}],
                     "noNewPrivileges": true},
         "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                    {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}],
         "linux": {"resources": {"memory": {"limit": 268435456}, "cpu": {"quota": 150000, "period": 100000}, "pids": {"limit": 64}},
                   "namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}]},
         "annotations": {"dev.vmfactory.target": "s390x"}}
        """

    @Test("a bundle as a run: the root folder, the process with its groups, limits and capabilities, memory, vCPUs, pids, tmpfs, the network namespace, the target")
    func bundleRequest() throws {
        let dir = try Self.bundle(Self.plain)
        let bundle = try BundleRun(bundle: dir, log: RuntimeLog(path: nil, format: .text, debug: false))
        let request = try bundle.request(configuration: RuntimeConfiguration(), interactive: false)
        let run = request.run
        #expect(run.rootFolder == dir + "/rootfs" && run.hostname == "box")
        #expect(run.process.command == ["/bin/sh", "-c", "true"] && run.process.environment == ["PATH=/bin", "A=1"])
        #expect(run.process.user == "1000:1000" && run.process.workdir == "/srv")
        #expect(run.options.memoryMiB == 256 && run.options.cpus == 2 && run.options.pidsLimit == 64)
        #expect(run.options.tmpfs == [TmpfsMount(guest: "/run", options: ["nosuid", "mode=755", "size=65536k"])])
        #expect(request.networkNamespace == "/run/netns/x")
        #expect(run.platform == Platform.of(.s390x))
        let privileges = run.process.privileges
        #expect(privileges.groups == [10, 20] && privileges.noNewPrivileges && privileges.umask == 0o22)
        #expect(privileges.rlimits == [.init(name: "NOFILE", soft: 1024, hard: 2048)], "an unknown limit is skipped")
        #expect(privileges.capabilities?.bounding == (1 << 0 | 1 << 5) && privileges.capabilities?.effective == 1 << 5)
        let settings = Dictionary(privileges.settings.map { ($0.0, $0.1) }, uniquingKeysWith: { $1 })
        #expect(settings["groups"] == "10,20" && settings["rlimit"] == "NOFILE 1024 2048" && settings["capbounding"] == "21" && settings["nonewprivs"] == "1" && settings["umask"] == "22")
        #expect(BundleRun.cpuCount("0-3,6") == 5 && BundleRun.cpuCount("2") == 1 && BundleRun.cpuCount("3-1") == nil)
        #expect(NamespaceNetwork(path: "", interface: "eth0", address: "10.88.0.5", prefix: 16, gateway: nil, mac: "", mtu: 1500).netmask == "255.255.0.0")
        #expect(NamespaceNetwork(path: "", interface: "eth0", address: "10.0.0.1", prefix: 23, gateway: nil, mac: "", mtu: 1500).netmask == "255.255.254.0")
    }

    @Test("bad bundles are refused with what is wrong: not JSON, a field of the wrong type, another spec's major version, no process, no root folder")
    func badBundles() throws {
        let cases: [(String, Bool, String)] = [
            ("{not json", true, "is not an OCI runtime config"),
            (#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"user": {"uid": "root", "gid": 0}, "args": ["x"], "cwd": "/"}}"#, true, "at .process.user.uid"),
            (#"{"ociVersion": "2.0.0", "root": {"path": "rootfs"}, "process": {"user": {"uid": 0, "gid": 0}, "args": ["x"], "cwd": "/"}}"#, true, "is for OCI runtime spec 2.0.0"),
            (#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"user": {"uid": 0, "gid": 0}, "args": [], "cwd": "/"}}"#, true, "names no process to run"),
            (#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"user": {"uid": 0, "gid": 0}, "args": ["x"], "cwd": "/"}}"#, false, "is not a folder"),
        ]
        for (config, root, said) in cases {
            let dir = try Self.bundle(config, root: root)
            let error = #expect(throws: VMFactoryError.self) { _ = try OCIConfig.load(bundle: dir) }
            #expect(error?.message.contains(said) == true, "\(config): \(error?.message ?? "")")
        }
        let none = try TestSupport.temporaryDirectory("bundle")
        #expect(throws: VMFactoryError.self) { _ = try OCIConfig.load(bundle: none) }
    }

    @Test("the state: OCI's document, stopped once the supervisor is gone or its pid is another process's; JSON log lines")
    func state() throws {
        let root = try TestSupport.temporaryDirectory("runtime-root")
        let me = getpid()
        var state = ContainerState(
            id: "c1", bundle: "/b", pid: me, pidStart: ContainerState.processStat(me)?.start ?? 0, runID: "abc", status: .running,
            created: Date(), annotations: ["k": "v"]
        )
        try FileStore.createDirectory(ContainerState.folder(root: root, id: "c1"))
        try state.write(root: root)
        let read = try #require(try ContainerState.load(root: root, id: "c1"))
        #expect(read.currentStatus == .running && read.ociState["pid"] as? Int == Int(me) && read.ociState["status"] as? String == "running")
        state.pidStart += 1
        #expect(state.currentStatus == .stopped, "a pid whose start time differs is another process")
        state.pid = 0
        #expect(state.currentStatus == .stopped && state.ociState["pid"] as? Int == 0)
        #expect(try ContainerState.load(root: root, id: "nothing") == nil)

        let path = root + "/log.json"
        RuntimeLog(path: path, format: .json, debug: true).debug("a \"quoted\" word")
        let line = try #require(FileStore.readText(path).split(separator: "\n").first)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
        #expect(object["level"] == "debug" && object["msg"] == "a \"quoted\" word" && object["time"] != nil)
    }
}
