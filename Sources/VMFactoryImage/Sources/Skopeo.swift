import Foundation
import VMFactoryCore

/// skopeo, for everything that talks to a registry: it knows the auth files, mirrors and TLS
/// settings users already have. The argv is built as a value; failures are said in
/// vmfactory's words, with what to do next.
public struct Skopeo: Sendable {
    /// Which image of a command the registry options apply to: `copy` spells them
    /// `--src-…` and `--dest-…`, `inspect` without a prefix.
    public enum Side: Sendable {
        case only, source, destination
    }

    public var registry: RegistryOptions
    /// The host environment; only what skopeo reads for credentials and registries passes.
    public var environment: [String: String]
    public var runner: any ProcessRunner

    /// Stands for the auth file in a command's argv until it runs: `--creds` reach skopeo in
    /// an auth file (mode 0600) that exists only while skopeo runs, so that the password is
    /// on no command line (which every user can read in /proc) and in no error message.
    public static let credentialsFile = "<credentials>"

    public init(registry: RegistryOptions, environment: [String: String], runner: any ProcessRunner) {
        self.registry = registry
        self.environment = environment
        self.runner = runner
    }

    /// `skopeo --command-timeout N SUBCOMMAND [registry options] ARGUMENTS`.
    public func command(_ subcommand: String, _ arguments: [String], side: Side = .only) -> Command {
        var words = ["--command-timeout", "\(Int(registry.timeout.seconds))s", subcommand]
        let prefix = switch side {
        case .only: "--"
        case .source: "--src-"
        case .destination: "--dest-"
        }
        if !registry.tlsVerify { words.append(prefix + "tls-verify=false") }
        if registry.credentials != nil { words += [prefix + "authfile", Self.credentialsFile] }
        var passed: [String: String] = [:]
        for name in ["REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_CONFIG", "CONTAINERS_REGISTRIES_CONF"] {
            if let value = environment[name] { passed[name] = value }
        }
        return Command("skopeo", words + arguments, environment: passed)
    }

    /// What skopeo's last log line says (`level=fatal msg="…"`), without its quoting and the
    /// prefix that repeats the reference, on one line: the lines of a registry's error list
    /// joined with "; ".
    public static func message(_ output: String) -> String? {
        guard var line = output.split(separator: "\n").last.map(String.init) else { return nil }
        if let start = line.range(of: "msg=\"") {
            var message = ""
            var escaped = false
            for character in line[start.upperBound...] {
                if escaped {
                    message += character == "n" ? "\n" : character == "t" ? " " : String(character)
                    escaped = false
                } else if character == "\\" {
                    escaped = true
                } else if character == "\"" {
                    break
                } else {
                    message.append(character)
                }
            }
            line = message.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
                .reduce("") { joined, part in joined.isEmpty ? part : joined + (joined.hasSuffix(":") ? " " : "; ") + part }
        }
        if line.hasPrefix("Error parsing image name "), let colon = line.range(of: "\": ") {
            line = String(line[colon.upperBound...])
        }
        return line
    }

    /// What a failure message means, as a hint.
    public enum Failure: Sendable, Equatable {
        case unauthorized, unreachable, tls, notFound, registryFault, other

        /// `references`: the images the command names (`docker://…`). Their repositories and
        /// tags are the user's words and may be any ("tls", "denied"); they are left out of
        /// what is read for the meaning.
        public init(message: String, references: [String] = []) {
            let lower = Self.withoutNames(message, of: references).lowercased()
            if lower.contains("unauthorized") || lower.contains("authentication required") || lower.contains("denied") {
                self = .unauthorized
            } else if lower.contains("connection refused") || lower.contains("no such host") || lower.contains("timeout") || lower.contains("deadline exceeded")
                        || lower.contains("no route to host") || lower.contains("network is unreachable") {
                self = .unreachable
            } else if lower.contains("http response to https client") || lower.contains("certificate") || lower.contains("tls") {
                self = .tls
            } else if lower.contains("unexpected http status: 5") || lower.contains("internal server error") || lower.contains("service unavailable")
                        || lower.contains("bad gateway") || lower.contains("gateway timeout") || lower.contains("blob unknown to registry") {
                self = .registryFault
            } else if lower.contains("manifest unknown") || lower.contains("not found") || lower.contains("name unknown") {
                self = .notFound
            } else {
                self = .other
            }
        }

        /// The words of `message` but those that name a repository of `references` (a path
        /// holding the repository's components in a row: `h:5000/vmf/tls`, `https://h/v2/vmf/tls/…`)
        /// or are its tag.
        static func withoutNames(_ message: String, of references: [String]) -> String {
            var names: [(path: [Substring], tag: String?)] = []
            for reference in references where reference.hasPrefix("docker://") {
                let (name, tag, _) = ImageSource.split(repository: String(reference.dropFirst("docker://".count)))
                var path = name.split(separator: "/")
                if path.count > 1, Skopeo.registryHost(of: "docker://" + name) != "docker.io" { path.removeFirst() }
                if !path.isEmpty { names.append((path, tag)) }
            }
            guard !names.isEmpty else { return message }
            return message.split(separator: " ", omittingEmptySubsequences: false).filter { word in
                let bare = word.trimmingCharacters(in: CharacterSet(charactersIn: "\"':,;()"))
                let parts = bare.split(separator: "/", omittingEmptySubsequences: false)
                return !names.contains { name in
                    let width = name.path.count
                    return bare == name.tag
                        || (parts.count >= width && (0...parts.count - width).contains { Array(parts[$0..<$0 + width]) == name.path })
                }
            }.joined(separator: " ")
        }
    }

    /// The registry a `docker://` reference names: its first component when that is a host
    /// (a dot, a port or localhost), else Docker Hub's.
    static func registryHost(of reference: String) -> String? {
        guard reference.hasPrefix("docker://") else { return nil }
        let name = reference.dropFirst("docker://".count)
        guard let slash = name.firstIndex(of: "/") else { return "docker.io" }
        let first = String(name[..<slash])
        return first.contains(".") || first.contains(":") || first == "localhost" ? first : "docker.io"
    }

    /// The auth file's contents for the registries `command` names.
    func authDocument(for command: Command) throws -> Data {
        let token = Data((registry.credentials ?? "").utf8).base64EncodedString()
        var auths: [String: [String: String]] = [:]
        for host in command.arguments.compactMap(Self.registryHost(of:)) { auths[host] = ["auth": token] }
        return try JSONSerialization.data(withJSONObject: ["auths": auths], options: [.sortedKeys])
    }

    /// Runs a skopeo command, with the auth file in place while it runs.
    func execute(_ command: Command) async throws -> CommandResult {
        guard registry.credentials != nil, command.arguments.contains(Self.credentialsFile) else { return try await runner.run(command, output: .stdoutApart) }
        let authFile = NSTemporaryDirectory() + "/.vmfactory-auth-\(getpid())-\(UInt32.random(in: .min ... .max)).json"
        var command = command
        command.arguments = command.arguments.map { $0 == Self.credentialsFile ? authFile : $0 }
        let fd = open(authFile, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw VMFactoryError.io("cannot create the credentials file", path: authFile) }
        defer { unlink(authFile) }
        let document = try authDocument(for: command)
        do {
            try document.withUnsafeBytes { try FileStore.writeAll(fd, $0, path: authFile) }
            close(fd)
        } catch {
            close(fd)
            throw error
        }
        return try await runner.run(command, output: .stdoutApart)
    }

    /// The pauses before a command is run again after the registry failed on its side: a
    /// server error (5xx), or a push whose manifest names a blob the registry had just taken
    /// and then did not find. Both happen for a moment while another client pushes the same
    /// image: docker-registry's filesystem storage rewrites a tag's or a blob's link in place
    /// (truncate, write), and a read in between finds it empty. Every command retried is
    /// idempotent (a read, or a push of content-addressed blobs and a tag).
    public static let registryFaultPauses: [Duration] = [.milliseconds(500), .seconds(1), .seconds(2)]

    /// Runs skopeo, and says in vmfactory's words what its failure means.
    public func run(_ command: Command, reference: String, what: String) async throws -> CommandResult {
        let (result, failed) = try await executeRetrying(command)
        if let failed { throw error(failed, command: command, reference: reference, what: what) }
        return result
    }

    /// The raw bytes of a manifest or index in a registry, or nil when the registry has no
    /// such tag (other failures throw).
    public func rawManifest(_ reference: String, what: String) async throws -> Data? {
        let command = command("inspect", ["--raw", reference])
        let (result, failed) = try await executeRetrying(command)
        guard let failed else { return Data(result.output.utf8) }
        if failed.meaning == .notFound { return nil }
        throw error(failed, command: command, reference: reference, what: what)
    }

    /// A command's failure: what skopeo said, what that means, and how many times it ran.
    struct Failed {
        var said: String
        var meaning: Failure
        var tries: Int
    }

    /// Runs a command, again after each pause while the registry fails on its side; the
    /// last result, and its failure if it failed.
    func executeRetrying(_ command: Command) async throws -> (CommandResult, Failed?) {
        var tries = 1
        while true {
            let result = try await execute(command)
            if result.succeeded { return (result, nil) }
            let said = Self.message(result.errorOutput) ?? result.statusDescription
            let failed = Failed(said: said, meaning: Failure(message: said, references: command.arguments), tries: tries)
            guard failed.meaning == .registryFault, tries <= Self.registryFaultPauses.count else { return (result, failed) }
            try await Task.sleep(for: Self.registryFaultPauses[tries - 1])
            tries += 1
        }
    }

    func error(_ failed: Failed, command: Command, reference: String, what: String) -> VMFactoryError {
        var details = ["command: \(command)"]
        if failed.tries > 1 { details.append("the registry failed on its side \(failed.tries) times in a row") }
        return VMFactoryError(.fetchFailed, "\(what) \(reference) failed: \(failed.said)", hint: hint(for: failed.meaning), details: details)
    }

    func hint(for failure: Failure) -> String {
        switch failure {
        case .unauthorized:
            registry.credentials == nil
                ? "the registry wants credentials: give --creds USER:PASSWORD, or log in (skopeo login) so that the auth file has them"
                : "the registry refused the credentials given with --creds"
        case .unreachable: "the registry does not answer; check that it runs and its address"
        case .tls: "a registry without TLS or with a certificate this host does not trust: add --tls-verify=false"
        case .notFound: "the registry has no such image or tag"
        case .registryFault: "the registry failed on its side; try again, and see its log if it goes on"
        case .other: "see skopeo's message above"
        }
    }
}
