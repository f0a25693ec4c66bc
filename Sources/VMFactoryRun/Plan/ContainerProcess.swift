import Foundation
import VMFactoryCore
import VMFactoryLifecycle
import VMFactoryImage

/// What the command line asks of the container's process, as docker run spells it.
public struct ProcessRequest: Sendable, Equatable {
    /// COMMAND [ARG...] after the image; empty keeps the image's Cmd.
    public var command: [String] = []
    /// `--entrypoint`: replaces the image's Entrypoint (and drops its Cmd); "" clears it.
    public var entrypoint: String?
    /// `-e NAME=VALUE` or `-e NAME` (taken from vmfactory's environment), in order.
    public var environment: [String] = []
    /// The contents of each `--env-file`, in order, with the file's name for messages.
    public var environmentFiles: [(name: String, text: String)] = []
    public var user: String?
    public var workdir: String?
    /// An OCI runtime's groups, limits, capabilities, no_new_privs and umask.
    public var privileges = ProcessPrivileges()

    public init() {}

    public static func == (lhs: ProcessRequest, rhs: ProcessRequest) -> Bool {
        lhs.command == rhs.command && lhs.entrypoint == rhs.entrypoint && lhs.environment == rhs.environment
            && lhs.environmentFiles.map(\.name) == rhs.environmentFiles.map(\.name) && lhs.environmentFiles.map(\.text) == rhs.environmentFiles.map(\.text)
            && lhs.user == rhs.user && lhs.workdir == rhs.workdir && lhs.privileges == rhs.privileges
    }
}

/// The container's process: the image's config and the command line combined as docker
/// combines them.
public struct ContainerProcess: Sendable, Equatable, Codable {
    public var argv: [String]
    /// NAME=VALUE, one entry per name, in the order names first appeared.
    public var environment: [String]
    /// USER[:GROUP], names or numbers, resolved in the image; "" is root.
    public var user: String
    public var workdir: String
    /// What a stop sends (the image's StopSignal, else SIGTERM).
    public var stopSignal: Int32
    /// An OCI runtime's groups, limits, capabilities, no_new_privs and umask.
    public var privileges = ProcessPrivileges()

    /// docker's `PATH` for a process whose environment has none (the init's default too).
    public static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// Entrypoint + Cmd; COMMAND replaces Cmd; `--entrypoint` replaces Entrypoint and drops
    /// Cmd. Env from the image, then each `--env-file`, then each `-e`. WorkingDir and User
    /// from the image unless given.
    public static func combine(image: ImageConfig.Execution, request: ProcessRequest, hostEnvironment: [String: String]) throws -> ContainerProcess {
        let entrypoint: [String]
        var cmd: [String]
        if let given = request.entrypoint {
            entrypoint = given.isEmpty ? [] : [given]
            cmd = []
        } else {
            entrypoint = image.Entrypoint ?? []
            cmd = image.Cmd ?? []
        }
        if !request.command.isEmpty { cmd = request.command }
        let argv = entrypoint + cmd
        guard let program = argv.first, !program.isEmpty else {
            throw VMFactoryError(
                .invalidArgument, "no command to run: the image has no Entrypoint or Cmd, and none was given",
                hint: "give one after the image, as in `vmfactory run IMAGE /bin/sh -c 'echo hi'`"
            )
        }
        var environment = EnvironmentList()
        for entry in image.Env ?? [] { try environment.set(entry, from: "the image's Env", hostEnvironment: [:]) }
        try environment.add(files: request.environmentFiles, entries: request.environment, hostEnvironment: hostEnvironment)
        let workdir = request.workdir ?? (image.WorkingDir.flatMap { $0.isEmpty ? nil : $0 } ?? "/")
        guard workdir.hasPrefix("/") else {
            throw VMFactoryError(.invalidArgument, "the working directory '\(workdir)' is not an absolute path", hint: "give -w an absolute path inside the image, such as /srv")
        }
        for word in argv + [workdir] + [request.user ?? ""] where word.contains("\0") {
            throw VMFactoryError(.invalidArgument, "an argument holds a NUL byte", hint: "arguments, paths and user names are C strings in the guest")
        }
        let stopSignal = try image.StopSignal.map { try Signals.number(of: $0, what: "the image's StopSignal") } ?? SIGTERM
        var process = ContainerProcess(argv: argv, environment: environment.entries, user: request.user ?? image.User ?? "", workdir: workdir, stopSignal: stopSignal)
        process.privileges = request.privileges
        return process
    }
}
