import Foundation
import VMFactoryCore
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

    public init() {}

    public static func == (lhs: ProcessRequest, rhs: ProcessRequest) -> Bool {
        lhs.command == rhs.command && lhs.entrypoint == rhs.entrypoint && lhs.environment == rhs.environment
            && lhs.environmentFiles.map(\.name) == rhs.environmentFiles.map(\.name) && lhs.environmentFiles.map(\.text) == rhs.environmentFiles.map(\.text)
            && lhs.user == rhs.user && lhs.workdir == rhs.workdir
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
        return ContainerProcess(argv: argv, environment: environment.entries, user: request.user ?? image.User ?? "", workdir: workdir, stopSignal: stopSignal)
    }
}

extension ContainerProcess {
    /// An exec's own environment (`--env-file`, then `-e`), which goes over the run's.
    public static func execEnvironment(files: [(name: String, text: String)], entries: [String], hostEnvironment: [String: String]) throws -> [String] {
        var environment = EnvironmentList()
        try environment.add(files: files, entries: entries, hostEnvironment: hostEnvironment)
        return environment.entries
    }
}

/// NAME=VALUE entries where a later value of a name replaces the earlier one in place.
struct EnvironmentList {
    /// Each `--env-file` in order (# comments and blank lines skipped), then each `-e`.
    mutating func add(files: [(name: String, text: String)], entries: [String], hostEnvironment: [String: String]) throws {
        for file in files {
            // "\r\n" is one Character, a line break like "\n".
            for (number, line) in file.text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
                let entry = String(line)
                let trimmed = entry.trimmingCharacters(in: .whitespaces)
                if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
                try set(entry, from: "\(file.name):\(number + 1)", hostEnvironment: hostEnvironment)
            }
        }
        for entry in entries { try set(entry, from: "-e", hostEnvironment: hostEnvironment) }
    }

    private(set) var entries: [String] = []
    private var index: [String: Int] = [:]

    /// `NAME=VALUE`, or `NAME` alone, which takes vmfactory's own value (and is skipped when
    /// vmfactory has none), as docker does.
    mutating func set(_ entry: String, from origin: String, hostEnvironment: [String: String]) throws {
        let name: String
        let value: String
        if let equals = entry.firstIndex(of: "=") {
            name = String(entry[..<equals])
            value = String(entry[entry.index(after: equals)...])
        } else {
            name = entry
            guard let host = hostEnvironment[entry] else { return }
            value = host
        }
        guard !name.isEmpty, !name.contains(where: { $0.isWhitespace || $0 == "\0" }), !value.contains("\0") else {
            throw VMFactoryError(.invalidArgument, "\(origin): '\(entry)' is not NAME=VALUE", hint: "write environment entries as NAME=VALUE, or NAME to pass vmfactory's own value")
        }
        let full = name + "=" + value
        if let existing = index[name] {
            entries[existing] = full
        } else {
            index[name] = entries.count
            entries.append(full)
        }
    }
}

/// Signal names and numbers as images and docker spell them: SIGTERM, TERM, 15, SIGRTMIN+3.
public enum Signals {
    static let names: [String: Int32] = [
        "HUP": SIGHUP, "INT": SIGINT, "QUIT": SIGQUIT, "ILL": SIGILL, "TRAP": SIGTRAP, "ABRT": SIGABRT, "BUS": SIGBUS,
        "FPE": SIGFPE, "KILL": SIGKILL, "USR1": SIGUSR1, "SEGV": SIGSEGV, "USR2": SIGUSR2, "PIPE": SIGPIPE, "ALRM": SIGALRM,
        "TERM": SIGTERM, "STKFLT": 16, "CHLD": SIGCHLD, "CONT": SIGCONT, "STOP": SIGSTOP, "TSTP": SIGTSTP, "TTIN": SIGTTIN,
        "TTOU": SIGTTOU, "URG": SIGURG, "XCPU": SIGXCPU, "XFSZ": SIGXFSZ, "VTALRM": SIGVTALRM, "PROF": SIGPROF,
        "WINCH": SIGWINCH, "IO": SIGIO, "PWR": 30, "SYS": SIGSYS,
    ]
    /// Linux's real-time signals as the C library leaves them to programs.
    static let realtimeMin: Int32 = 34
    static let realtimeMax: Int32 = 64

    public static func number(of text: String, what: String) throws -> Int32 {
        let upper = text.uppercased()
        let name = upper.hasPrefix("SIG") ? String(upper.dropFirst(3)) : upper
        if let number = Int32(name), number > 0, number <= realtimeMax { return number }
        if let number = names[name] { return number }
        if name.hasPrefix("RTMIN"), let offset = Int32(name == "RTMIN" ? "0" : String(name.dropFirst(5))), realtimeMin + offset <= realtimeMax, offset >= 0 {
            return realtimeMin + offset
        }
        if name.hasPrefix("RTMAX"), let offset = Int32(name == "RTMAX" ? "0" : String(name.dropFirst(5))), realtimeMax + offset >= realtimeMin, offset <= 0 {
            return realtimeMax + offset
        }
        throw VMFactoryError(.invalidArgument, "\(what) '\(text)' is not a signal", hint: "name a signal as SIGTERM, TERM or 15")
    }
}
