import Foundation
import Testing
@testable import VMFactoryCore
@testable import VMFactoryKernel

/// An icecream cluster on 127.0.0.1, as icecream's own test suite makes one: a scheduler, the
/// daemon this machine's icecc talks to (`--no-remote`: it compiles nothing for others) and a
/// helper daemon, all on ports and a network name of their own, logging to files.
final class IceccCluster: @unchecked Sendable {
    let directory: String
    let processes: [ChildProcess]

    var socket: String { directory + "/socket-local" }
    var helperLog: String { directory + "/helper.log" }

    /// What icecc needs to reach this cluster's daemon. `ICECC_TEST_REMOTEBUILD`: icecc
    /// compiles a job given to 127.0.0.1 itself, taking it for this machine, unless told that
    /// the helper on loopback is another one.
    var clientEnvironment: [String: String] { ["ICECC_TEST_SOCKET": socket, "ICECC_TEST_REMOTEBUILD": "1"] }

    private init(directory: String, processes: [ChildProcess]) {
        self.directory = directory
        self.processes = processes
    }

    static func start(in directory: String) async throws -> IceccCluster {
        try FileStore.createDirectory(directory)
        // The daemons run their compiles as the icecc user, which owns their environments
        // and writes the logs.
        chmod(directory, 0o777)
        let icecc = try #require(getpwnam("icecc"), "the icecc user (made by Debian's icecc package)")
        for name in ["envs-local", "envs-helper"] {
            try FileStore.createDirectory(directory + "/" + name)
            chown(directory + "/" + name, icecc.pointee.pw_uid, icecc.pointee.pw_gid)
        }
        let port = try LocalRegistry.freePort()
        let network = "vmftest\(getpid())x\(port)"
        // ICECC_TESTS: broadcasts stay on loopback, so that the cluster never meets another.
        let environment = TestSupport.environment.merging(["ICECC_TESTS": "1"]) { $1 }
        func find(_ executable: String) throws -> String {
            try #require(Doctor.findExecutable(executable, environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]))
        }
        func spawn(_ executable: String, _ arguments: [String], socket: String? = nil, idle: Bool = false) async throws -> ChildProcess {
            var command = Command(try find(executable), arguments)
            if idle {
                // The helper stands in for another machine, idle. On this one the rest of the
                // suite keeps both cores busy, and iceccd, which reports its load from
                // /proc/stat, would call itself full (1000), and the scheduler would give it
                // nothing. So it reads a /proc/stat that never moves (a copy of this
                // machine's, bound over it in a mount namespace of its own), which iceccd
                // counts as an idle machine.
                command = Command(try find("unshare"), [
                    "--mount", "--propagation", "private", "sh", "-c",
                    #"cat /proc/stat > "$1" && mount --bind "$1" /proc/stat && shift && exec "$@""#,
                    "sh", directory + "/stat-idle", command.executable,
                ] + command.arguments)
            }
            var variables = environment
            if let socket { variables["ICECC_TEST_SOCKET"] = socket }
            return try await ChildProcess.spawn(command, environment: variables, stdout: .null, stderr: .null)
        }
        var processes: [ChildProcess] = []
        do {
            processes.append(try await spawn("icecc-scheduler", ["-n", network, "-p", String(port), "-l", directory + "/scheduler.log", "-vv"]))
            for (name, extra) in [("local", ["--no-remote"]), ("helper", [])] {
                let arguments = extra + [
                    "-n", network, "-s", "127.0.0.1:\(port)", "-N", name, "-b", directory + "/envs-" + name, "-m", "2",
                    "-p", String(try LocalRegistry.freePort()), "-l", directory + "/\(name).log", "-vv",
                ]
                processes.append(try await spawn("iceccd", arguments, socket: directory + "/socket-" + name, idle: name == "helper"))
            }
            let connected = await TestSupport.eventually(within: 45) {
                ["local", "helper"].allSatisfy { ((try? FileStore.readText(directory + "/\($0).log")) ?? "").contains("Connected to scheduler") }
            }
            guard connected else { throw VMFactoryError(.internalError, "the icecream daemons did not reach their scheduler; see \(directory)") }
        } catch {
            for process in processes { process.terminate(grace: .seconds(2)) }
            throw error
        }
        return IceccCluster(directory: directory, processes: processes)
    }

    func stop() {
        for process in processes.reversed() { process.terminate(grace: .seconds(3)) }
    }

    /// How many compiles the helper finished.
    var remoteCompiles: Int {
        ((try? FileStore.readText(helperLog)) ?? "").components(separatedBy: "Remote compilation completed with exit code 0").count - 1
    }
}

extension DistributedBuildIntegrationTests {
    /// In the distcc build's build directory, serialized with the other tests that build there:
    /// every eighth object of the kernel proper removed and compiled again through icecream
    /// gives the reference bytes (the command lines are the same through either engine, so
    /// kbuild compiles only what is missing).
    @Test(
        "icecream: doctor checks the daemon and both compilers; an x86_64 build through a scheduler and a helper on loopback compiles on the helper and gives the reference bytes; with no iceccd the build compiles here, warning",
        .needsTool("icecc"), .needsTool("icecc-create-env")
    )
    func icecc() async throws {
        _ = try await Self.reference()
        let dir = try TestSupport.temporaryDirectory()
        let cluster = try await IceccCluster.start(in: dir + "/icecc")
        defer { cluster.stop() }
        let cache = try await DistccBuild.shared.get().cache

        // doctor: the daemon answers; gcc and the s390x cross compiler compile through icecc
        // (their environments made on the way) to the bytes they make here.
        let doctor = try await TestSupport.runCLI(["doctor", "--icecc", "--cache-dir", cache], environment: cluster.clientEnvironment)
        #expect(doctor.status == 0, "\(doctor.stdout)\n\(doctor.stderr)")
        #expect(doctor.stdout.contains("icecc: ok through the iceccd at \(cluster.socket) (gcc, s390x-linux-gnu-gcc)"), "\(doctor.stdout)")
        let environments = try FileManager.default.contentsOfDirectory(atPath: cache + "/icecc/environments")
        #expect(environments.contains { $0.hasPrefix("gcc-") } && environments.contains { $0.hasPrefix("s390x-linux-gnu-gcc-") }, "\(environments)")
        let listed = try await TestSupport.run("tar", ["tzf", cache + "/icecc/environments/" + (try #require(environments.first { $0.hasPrefix("s390x") }))])
        #expect(listed.output.contains("usr/bin/gcc") && listed.output.contains("usr/bin/cc1"), "\(listed.output)")

        let build = cache + "/builds/container/x86_64"
        try Self.emptyCcache(in: cache)
        let (removed, objects) = try Self.removeCompiledObjects(in: build, stride: 8)
        #expect(objects > 600 && removed.count == (objects + 7) / 8, "objects compiled from C in the build directory: \(objects), removed \(removed.count)")
        let before = cluster.remoteCompiles
        let built = try await Self.build(cache: cache, output: dir + "/out", ["--icecc"], environment: cluster.clientEnvironment)
        #expect(built.status == 0, "\(built.stderr)")
        #expect(built.stderr.contains("icecc: through the iceccd at \(cluster.socket)"), "\(built.stderr)")
        let jobs = ProcessInfo.processInfo.activeProcessorCount * IceccPlanner.jobsPerCore
        #expect(built.stderr.contains("make vmlinux bzImage -j\(jobs)"), "-j is \(IceccPlanner.jobsPerCore) per core: \(built.stderr)")
        for object in removed { #expect(FileStore.isRegularFile(build + "/" + object), "\(object) was not compiled again") }
        let remote = cluster.remoteCompiles - before
        #expect(remote > removed.count / 5, "compiles on the helper: \(remote) of \(removed.count)")
        try await Self.expectIdentical(dir + "/out/container/x86_64")

        // No iceccd any more: the build compiles here, with the warning, to the same bytes.
        cluster.stop()
        let again = ["kernel/fork.o", "init/main.o", "mm/memory.o"]
        for object in again { try FileManager.default.removeItem(atPath: build + "/" + object) }
        let local = try await Self.build(cache: cache, output: dir + "/out-local", ["--icecc"], environment: cluster.clientEnvironment)
        #expect(local.status == 0, "\(local.stderr)")
        #expect(local.stderr.contains("icecc: no iceccd answers on this machine"), "\(local.stderr)")
        for object in again { #expect(FileStore.isRegularFile(build + "/" + object), "\(object) was not compiled again") }
        #expect(cluster.remoteCompiles - before == remote)
        try await Self.expectIdentical(dir + "/out-local/container/x86_64")
    }
}
