import Foundation
import VMFactoryCore

/// Compiling on helper machines, through distcc or icecream: make runs here, each compile is
/// preprocessed here and compiled on a helper (distcc's plain mode, not pump mode; icecream's
/// only mode), configuration, assembly and linking stay here. The command lines kbuild
/// records stay those of a local build: without ccache the compiler names reach the engine
/// through a folder of links first in PATH (the masquerade mode both engines have), with
/// ccache through `CCACHE_PREFIX`. So a distributed build and a local one share a build
/// directory without either recompiling the other's objects, and the keys leave the engine
/// out, as they leave ccache out: the bytes are the same.
public struct DistributedCompile: Sendable, Equatable {
    /// The engine's own variables: `DISTCC_HOSTS`, `DISTCC_DIR`, … or `ICECC_…`.
    public var variables: [String: String]
    /// PATH with the masquerade folder first: `gcc`, `s390x-linux-gnu-gcc`, … linked to the engine.
    public var path: String
    /// The concurrent jobs the helpers take (`distcc -j`), or the default for icecream.
    public var slots: Int
    /// The engine's client, `distcc` or `icecc`.
    public var executable: String

    public init(variables: [String: String], path: String, slots: Int, executable: String) {
        self.variables = variables
        self.path = path
        self.slots = slots
        self.executable = executable
    }

    /// What make's environment gets, on top of the build's own.
    public func environment(ccache: Bool) -> [String: String] {
        var environment = variables
        if ccache {
            environment["CCACHE_PREFIX"] = executable
        } else {
            environment["PATH"] = path
        }
        return environment
    }

    /// Links each compiler's name to `executable` in `folder`, and returns PATH with it first.
    static func masquerade(_ compilers: [String], as executable: String, in folder: String, path: String?) throws -> String {
        try FileStore.createDirectory(folder)
        for compiler in Set(compilers) {
            let link = folder + "/" + compiler
            if (try? FileManager.default.destinationOfSymbolicLink(atPath: link)) == executable { continue }
            // Made under a temporary name and renamed, so that two builds at once never see
            // the link missing.
            let temporary = FileStore.temporaryName(for: link)
            try FileManager.default.createSymbolicLink(atPath: temporary, withDestinationPath: executable)
            try FileStore.rename(temporary, to: link)
        }
        return folder + ":" + (path ?? "/usr/local/bin:/usr/bin:/bin")
    }
}

/// One entry of a distcc host list (distcc(1), HOST SPECIFICATIONS).
public struct DistccHost: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// A distccd reached over TCP.
        case tcp(host: String, port: UInt16)
        /// `@host`: distccd started over ssh; it cannot be probed without logging in.
        case ssh
        /// `localhost`: compiles here, no daemon.
        case local
        /// `--randomize`, `--localslots=N`, `+zeroconf`: options, kept as they are.
        case option
    }

    public var text: String
    public var kind: Kind

    public var description: String { text }

    public static let defaultPort: UInt16 = 3632

    /// Splits a host list at blanks; each word is one host or option.
    public static func parse(_ list: String) throws -> [DistccHost] {
        let words = list.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).map(String.init)
        guard !words.isEmpty else {
            throw VMFactoryError(.invalidArgument, "the distcc host list is empty", hint: "give hosts as distcc takes them: HOST[:PORT][/LIMIT] …, such as '10.0.0.2/8 10.0.0.3:3633/4'")
        }
        return try words.map { word in
            if word.hasPrefix("--") || word.hasPrefix("+") { return DistccHost(text: word, kind: .option) }
            if word.hasPrefix("@") || word.contains("@") { return DistccHost(text: word, kind: .ssh) }
            // HOST[:PORT][/LIMIT][,OPTION…]
            var rest = Substring(word)
            if let comma = rest.firstIndex(of: ",") { rest = rest[..<comma] }
            if let slash = rest.firstIndex(of: "/") {
                guard Int(rest[rest.index(after: slash)...]).map({ $0 > 0 }) == true else {
                    throw VMFactoryError(.invalidArgument, "distcc host '\(word)': the job limit after / is not a positive number", hint: "write HOST[:PORT]/LIMIT, such as 10.0.0.2/8")
                }
                rest = rest[..<slash]
            }
            var host = String(rest)
            var port = defaultPort
            if host.hasPrefix("["), let close = host.firstIndex(of: "]") {
                // [IPv6]:PORT
                let after = host[host.index(after: close)...]
                if after.hasPrefix(":") {
                    guard let value = UInt16(after.dropFirst()) else { throw invalidPort(word) }
                    port = value
                }
                host = String(host[host.index(after: host.startIndex)..<close])
            } else if let colon = host.firstIndex(of: ":"), host.filter({ $0 == ":" }).count == 1 {
                guard let value = UInt16(host[host.index(after: colon)...]) else { throw invalidPort(word) }
                port = value
                host = String(host[..<colon])
            }
            guard !host.isEmpty else { throw VMFactoryError(.invalidArgument, "distcc host '\(word)' names no host", hint: "write HOST[:PORT][/LIMIT]") }
            if host == "localhost" { return DistccHost(text: word, kind: .local) }
            return DistccHost(text: word, kind: .tcp(host: host, port: port))
        }
    }

    static func invalidPort(_ word: String) -> VMFactoryError {
        VMFactoryError(.invalidArgument, "distcc host '\(word)': the port is not a number from 1 to 65535", hint: "write HOST:PORT, such as 10.0.0.2:3632")
    }

    /// The helpers among `hosts`: those that compile elsewhere.
    public static func helpers(_ hosts: [DistccHost]) -> [DistccHost] {
        hosts.filter { if case .local = $0.kind { return false }; if case .option = $0.kind { return false }; return true }
    }
}

/// Finds out which helpers answer and sets distcc up for a build.
public struct DistccPlanner: Sendable {
    public var runner: any ProcessRunner
    public var console: Console
    public var environment: [String: String]
    public var cacheDirectory: String
    /// How long a helper may take to accept a connection.
    public var connectTimeout: Duration = .seconds(2)

    public init(runner: any ProcessRunner, console: Console, environment: [String: String], cacheDirectory: String) {
        self.runner = runner
        self.console = console
        self.environment = environment
        self.cacheDirectory = cacheDirectory
    }

    /// Whether each helper accepts a TCP connection (ssh helpers count as answering).
    public func probe(_ hosts: [DistccHost]) async -> [(DistccHost, String?)] {
        await withTaskGroup(of: (Int, String?).self) { group in
            for (position, host) in hosts.enumerated() {
                group.addTask {
                    guard case .tcp(let name, let port) = host.kind else { return (position, nil) }
                    return (position, await TCPProbe.connect(host: name, port: port, timeout: connectTimeout))
                }
            }
            var problems = [String?](repeating: nil, count: hosts.count)
            for await (position, problem) in group { problems[position] = problem }
            return hosts.enumerated().map { ($0.element, problems[$0.offset]) }
        }
    }

    /// The setup for `list` (the compilers of `targets` masqueraded), or nil with a warning
    /// when no helper answers and compiles: the build then compiles here, as without distcc.
    /// `source` says where the list came from; a list from the environment or the user's
    /// config that cannot be used is a warning, one given with --distcc an error.
    public func setup(_ list: String, compilers: [String], source: String = "--distcc") async throws -> DistributedCompile? {
        let explicit = source == "--distcc"
        func unusable(_ error: VMFactoryError) throws -> DistributedCompile? {
            if explicit { throw error }
            console.warning("distcc: \(error.message) (the host list of \(source)); compiling here. \(error.hint ?? "")")
            return nil
        }
        guard let distcc = Doctor.findExecutable("distcc", environment: environment) else {
            return try unusable(VMFactoryError(
                .missingTool, "distcc is not installed",
                hint: explicit ? "sudo apt-get install distcc, or build without --distcc" : "install distcc, or give --no-distcc"
            ))
        }
        let hosts: [DistccHost]
        do {
            hosts = try DistccHost.parse(list)
        } catch let error as VMFactoryError {
            return try unusable(error)
        }
        guard !DistccHost.helpers(hosts).isEmpty else {
            return try unusable(VMFactoryError(.invalidArgument, "the distcc host list '\(list)' names no helper", hint: "list the machines that run distccd, HOST[:PORT][/LIMIT]"))
        }
        // A helper counts when it answers and compiles with every compiler the build needs
        // the bytes this machine's compiler makes.
        let checked = try await check(hosts, compilers: compilers, distcc: distcc)
        for (host, problems) in checked where !problems.isEmpty {
            console.warning("distcc: helper \(host) left out: \(problems.joined(separator: "; "))")
        }
        let usable = Set(checked.filter { $0.problems.isEmpty }.map(\.host))
        let live = hosts.filter { host in DistccHost.helpers([host]).isEmpty || usable.contains(host.text) }
        guard !DistccHost.helpers(live).isEmpty else {
            console.warning("distcc: no helper answers; compiling here, without distcc")
            return nil
        }
        let hostList = live.map(\.text).joined(separator: " ")
        let state = cacheDirectory + "/distcc/state"
        try FileStore.createDirectory(state)
        let path = try DistributedCompile.masquerade(compilers, as: distcc, in: cacheDirectory + "/distcc/bin", path: environment["PATH"])
        let result = try await runner.run(Command(distcc, ["-j"], environment: ["DISTCC_HOSTS": hostList, "DISTCC_DIR": state]), output: .stdoutApart)
        let slots = result.succeeded ? Int(result.output.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0 : 0
        console.info("distcc: \(DistccHost.helpers(live).count) helper\(DistccHost.helpers(live).count == 1 ? "" : "s") (\(hostList)), \(slots) slots")
        // distcc would run `gcc` as `x86_64-linux-gnu-gcc`, whose `--version` kbuild writes
        // into the config and the kernel's banner: the compiler keeps the name it was given.
        return DistributedCompile(
            variables: ["DISTCC_HOSTS": hostList, "DISTCC_DIR": state, "DISTCC_NO_REWRITE_CROSS": "1"], path: path, slots: max(slots, 1), executable: distcc
        )
    }

    /// For `doctor --distcc`: each helper answers and compiles a small file with each
    /// compiler, through distcc with no local fallback, to the bytes this machine makes.
    public func check(_ list: String, compilers: [String]) async throws -> [(host: String, problems: [String])] {
        guard let distcc = Doctor.findExecutable("distcc", environment: environment) else {
            throw VMFactoryError(.missingTool, "distcc is not installed", hint: "sudo apt-get install distcc")
        }
        return try await check(try DistccHost.parse(list), compilers: compilers, distcc: distcc)
    }

    func check(_ hosts: [DistccHost], compilers: [String], distcc: String) async throws -> [(host: String, problems: [String])] {
        let helpers = DistccHost.helpers(hosts)
        let check = try await CompileCheck.make(runner: runner, cacheDirectory: cacheDirectory, compilers: compilers)
        defer { check.remove() }
        try FileStore.createDirectory(check.work + "/state")
        var report: [(String, [String])] = []
        for (position, (host, problem)) in await probe(helpers).enumerated() {
            if let problem {
                report.append((host.text, ["does not answer: \(problem)"]))
                continue
            }
            var problems: [String] = []
            for compiler in compilers {
                let environment = [
                    "DISTCC_HOSTS": host.text, "DISTCC_DIR": check.work + "/state", "DISTCC_FALLBACK": "0", "DISTCC_SKIP_LOCAL_RETRY": "1", "DISTCC_NO_REWRITE_CROSS": "1",
                ]
                switch try await check.compare(compiler, engine: distcc, environment: environment, object: "check-\(position)-\(compiler).o") {
                case .same, .noReference: break
                case .failed(let said): problems.append("cannot compile with \(compiler): \(said)")
                case .differs: problems.append("its \(compiler) makes other bytes than this machine's (another version)")
                }
            }
            report.append((host.text, problems))
        }
        return report
    }
}

/// A TCP connection attempt with a deadline: nil when the port accepts, else what failed.
enum TCPProbe {
    static func connect(host: String, port: UInt16, timeout: Duration) async -> String? {
        do {
            return try await BlockingWork.run("connecting to \(host):\(port)") { _ in attempt(host: host, port: port, timeout: timeout) }
        } catch {
            return "interrupted"
        }
    }

    static func attempt(host: String, port: UInt16, timeout: Duration) -> String? {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let first = list else { return "cannot resolve \(host): \(String(cString: gai_strerror(status)))" }
        defer { freeaddrinfo(list) }
        var failure = "no address"
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let current = entry {
            entry = current.pointee.ai_next
            let fd = socket(current.pointee.ai_family, current.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), current.pointee.ai_protocol)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            if Glibc.connect(fd, current.pointee.ai_addr, current.pointee.ai_addrlen) == 0 { return nil }
            guard errno == EINPROGRESS else {
                failure = String(cString: strerror(errno))
                continue
            }
            var poller = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let milliseconds = Int32(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
            var ready: Int32
            repeat { ready = poll(&poller, 1, milliseconds) } while ready < 0 && errno == EINTR
            if ready == 0 {
                failure = "no answer within \(timeout.components.seconds) s"
                continue
            }
            if ready < 0 {
                failure = String(cString: strerror(errno))
                continue
            }
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
            if error == 0 { return nil }
            failure = String(cString: strerror(error))
        }
        return failure
    }
}
