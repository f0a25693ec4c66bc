import Foundation
import VMFactoryCore

/// Compiling through icecream: the `icecc` client hands each compile to this machine's
/// `iceccd`, whose scheduler picks a helper; the helper compiles in a chroot made from a
/// compiler environment (a tarball of the compiler, its cc1, as and libraries) sent along
/// with the first job. vmfactory makes one environment per compiler with
/// `icecc-create-env` and names them all in `ICECC_VERSION`, the cross compiler's tagged
/// with its target prefix, so that the s390x compiles reach helpers as the native ones do.
public struct IceccPlanner: Sendable {
    public var runner: any ProcessRunner
    public var console: Console
    public var environment: [String: String]
    public var cacheDirectory: String

    /// make's jobs per core of this machine when `-j` is not given: icecream's scheduler
    /// has the cluster's size, and no client asks it, so the jobs are sized to what this
    /// machine can feed (it preprocesses every file and links).
    public static let jobsPerCore = 4

    public init(runner: any ProcessRunner, console: Console, environment: [String: String], cacheDirectory: String) {
        self.runner = runner
        self.console = console
        self.environment = environment
        self.cacheDirectory = cacheDirectory
    }

    /// Where icecc looks for the local daemon, in its order (`ICECC_TEST_SOCKET` alone when set).
    public static func socketPaths(environment: [String: String]) -> [String] {
        if let socket = environment["ICECC_TEST_SOCKET"], !socket.isEmpty { return [socket] }
        var paths = ["/var/run/icecc/iceccd.socket", "/var/run/iceccd.socket"]
        if let home = environment["HOME"], !home.isEmpty { paths.append(home + "/.iceccd.socket") }
        return paths
    }

    /// The socket of the iceccd that answers, or what was tried.
    public func localDaemon() -> (socket: String?, problem: String) {
        var tried: [String] = []
        for path in Self.socketPaths(environment: environment) {
            guard let problem = UnixSocketProbe.connect(path) else { return (path, "") }
            tried.append("\(path): \(problem)")
        }
        return (nil, tried.joined(separator: "; "))
    }

    /// The host's `ICECC_*` variables (the daemon's socket, a preferred host, …) and
    /// `ICECC_VERSION`: the user's when set, else the environments made here.
    func variables(compilers: [String], createEnv: String) async throws -> [String: String] {
        var variables = environment.filter { $0.key.hasPrefix("ICECC_") }
        if variables["ICECC_VERSION"].map({ !$0.isEmpty }) != true {
            var environments: [(compiler: String, tarball: String)] = []
            for compiler in Set(compilers).sorted() {
                environments.append((compiler, try await compilerEnvironment(compiler, createEnv: createEnv)))
            }
            variables["ICECC_VERSION"] = Self.version(environments, platform: Target.hostMachine)
        }
        return variables
    }

    /// `ICECC_VERSION` naming each compiler's environment. icecc takes the entry whose
    /// `=PREFIX` is the compiler's name up to its last '-' (the entry without one for `gcc`);
    /// the platform is the machine a helper must be to run the environment's binaries.
    static func version(_ environments: [(compiler: String, tarball: String)], platform: String) -> String {
        let entries = environments.map { compiler, tarball -> String in
            let prefix = compiler.range(of: "-", options: .backwards).map { String(compiler[..<$0.lowerBound]) } ?? ""
            return prefix.isEmpty ? tarball : "\(platform):\(tarball)=\(prefix)"
        }
        return (entries.filter { !$0.contains("=") } + entries.filter { $0.contains("=") }).joined(separator: ",")
    }

    /// The setup for `compilers`, or nil with a warning when this machine has no iceccd
    /// that answers: the build then compiles here, as without icecream. icecc not installed
    /// is an error when `--icecc` asked for it, else a warning.
    /// `icecc` and `icecc-create-env`, or nil when icecream is not installed.
    func tools() -> (icecc: String, createEnv: String)? {
        guard let icecc = Doctor.findExecutable("icecc", environment: environment),
              let createEnv = Doctor.findExecutable("icecc-create-env", environment: environment)
        else { return nil }
        return (icecc, createEnv)
    }

    public func setup(compilers: [String], source: String = "--icecc") async throws -> DistributedCompile? {
        let explicit = source.hasPrefix("--")
        guard let (icecc, createEnv) = tools() else {
            let error = VMFactoryError(.missingTool, "icecream (icecc) is not installed", hint: explicit ? "sudo apt-get install icecc, or build without --icecc" : "install icecc, or give --no-icecc")
            if explicit { throw error }
            console.warning("icecc: \(error.message) (asked for by \(source)); compiling here. \(error.hint ?? "")")
            return nil
        }
        let daemon = localDaemon()
        guard let socket = daemon.socket else {
            console.warning("icecc: no iceccd answers on this machine (\(daemon.problem)); compiling here, without icecream. Start iceccd (systemctl start iceccd) pointed at your scheduler.")
            return nil
        }
        let variables = try await variables(compilers: compilers, createEnv: createEnv)
        if let problem = try await check(compilers: compilers, icecc: icecc, variables: variables).compactMap(\.problem).first {
            console.warning("icecc: \(problem); compiling here, without icecream")
            return nil
        }
        let path = try DistributedCompile.masquerade(compilers, as: icecc, in: cacheDirectory + "/icecc/bin", path: environment["PATH"])
        let slots = ProcessInfo.processInfo.activeProcessorCount * Self.jobsPerCore
        console.info("icecc: through the iceccd at \(socket), \(slots) jobs unless -j says otherwise")
        return DistributedCompile(variables: variables, path: path, slots: slots, executable: icecc)
    }

    /// For `doctor --icecc`: the local daemon answers, and each compiler compiles a small
    /// file through icecc to the bytes it makes here.
    public func check(compilers: [String]) async throws -> (daemon: String?, problems: [String]) {
        guard let (icecc, createEnv) = tools() else {
            throw VMFactoryError(.missingTool, "icecream (icecc) is not installed", hint: "sudo apt-get install icecc")
        }
        let daemon = localDaemon()
        guard let socket = daemon.socket else { return (nil, ["no iceccd answers on this machine: \(daemon.problem)"]) }
        let variables = try await variables(compilers: compilers, createEnv: createEnv)
        return (socket, try await check(compilers: compilers, icecc: icecc, variables: variables).compactMap(\.problem))
    }

    func check(compilers: [String], icecc: String, variables: [String: String]) async throws -> [(compiler: String, problem: String?)] {
        let check = try await CompileCheck.make(runner: runner, cacheDirectory: cacheDirectory, compilers: compilers)
        defer { check.remove() }
        var report: [(String, String?)] = []
        for compiler in compilers {
            switch try await check.compare(compiler, engine: icecc, environment: variables, object: "icecc-\(compiler).o") {
            case .same: report.append((compiler, nil))
            case .noReference(let said): report.append((compiler, "\(compiler) does not compile here: \(said)"))
            case .failed(let said): report.append((compiler, "icecc cannot compile with \(compiler): \(said)"))
            case .differs: report.append((compiler, "\(compiler) through icecc makes other bytes than here (a helper with another compiler environment)"))
            }
        }
        return report
    }

    /// The icecream environment of `compiler`, made once with `icecc-create-env` and kept
    /// under a name derived from the compiler's version and the bytes of its driver and cc1.
    func compilerEnvironment(_ compiler: String, createEnv: String) async throws -> String {
        guard let found = Doctor.findExecutable(compiler, environment: environment) else {
            throw VMFactoryError(.missingTool, "\(compiler) is not installed", hint: "install the compiler the target needs (vmfactory doctor lists it)")
        }
        let driver = URL(fileURLWithPath: found).resolvingSymlinksInPath().path
        let version = try await runner.runChecked(Command(driver, ["-v"]), output: .capture, what: "asking \(compiler) its version")
        let cc1 = try await runner.runChecked(Command(driver, ["-print-prog-name=cc1"]), output: .stdoutApart, what: "asking \(compiler) for cc1")
            .output.trimmingCharacters(in: .whitespacesAndNewlines)
        var identity = version.output + "\n" + (try await SHA256Digest.ofFile(at: driver)).hex
        if cc1.hasPrefix("/") { identity += "\n" + (try await SHA256Digest.ofFile(at: cc1)).hex }
        let folder = cacheDirectory + "/icecc/environments"
        let tarball = folder + "/\(compiler)-\(SHA256Digest.of(identity).short).tar.gz"
        if FileStore.isRegularFile(tarball) { return tarball }
        console.info("icecc: making the compiler environment of \(compiler) (icecc-create-env)")
        try FileStore.createDirectory(folder)
        let work = FileStore.temporaryName(for: folder + "/making")
        try FileStore.createDirectory(work)
        defer { try? FileStore.removeTree(work) }
        // `--gcc GCC G++`: kernels have no C++, so the C compiler stands in for both.
        _ = try await runner.runChecked(Command(createEnv, ["--gcc", driver, driver], workingDirectory: work), output: .capture, what: "making the icecream environment of \(compiler)")
        guard let made = try FileManager.default.contentsOfDirectory(atPath: work).first(where: { $0.hasSuffix(".tar.gz") }) else {
            throw VMFactoryError(.processFailed, "icecc-create-env made no environment for \(compiler)", hint: "run icecc-create-env --gcc \(driver) \(driver) by hand to see why")
        }
        try FileStore.rename(work + "/" + made, to: tarball)
        return tarball
    }
}

/// Whether a UNIX socket accepts a connection: nil when it does, else why not.
enum UnixSocketProbe {
    static func connect(_ path: String) -> String? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return "the path is too long" }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return String(cString: strerror(errno)) }
        defer { close(fd) }
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return status == 0 ? nil : String(cString: strerror(errno))
    }
}
