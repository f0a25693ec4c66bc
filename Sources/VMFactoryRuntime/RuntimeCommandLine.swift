import Foundation
import VMFactoryCore

/// runc's command line, as podman (through conmon), docker (through containerd's shim) and
/// containerd call it: global flags, then a command, its flags and the container's id. Flags
/// take `--flag value` or `--flag=value`; a flag runc has and vmfactory-runtime does not need
/// is taken and said with --debug, never refused.
public struct RuntimeCommandLine: Sendable {
    public var root = "/run/vmfactory-runtime"
    public var log: String?
    public var logFormat = RuntimeLog.Format.text
    public var debug = false
    public var systemdCgroup = false
    public var config: String?
    public var command = ""
    /// The command's flags, by long name without dashes; a flag without a value is "true".
    public var flags: [String: String] = [:]
    public var positionals: [String] = []
    /// Flags taken and not used, for --debug.
    public var ignored: [String] = []

    /// The global flags with a value, and those without.
    static let globalValues: Set<String> = ["root", "log", "log-format", "criu", "rootless", "config"]
    static let globalSwitches: Set<String> = ["debug", "systemd-cgroup", "version", "v", "help", "h"]
    /// Each command's flags with a value (all others are switches).
    static let valued: [String: Set<String>] = [
        "create": ["bundle", "b", "pid-file", "console-socket", "preserve-fds"],
        "run": ["bundle", "b", "pid-file", "console-socket", "preserve-fds"],
        "exec": ["process", "p", "pid-file", "console-socket", "cwd", "env", "e", "user", "u", "cap", "c", "process-label", "apparmor", "preserve-fds", "additional-gids", "g", "cgroup"],
        "supervise": ["bundle", "report-fd"],
        "exec-relay": ["process", "report-fd"],
        "ps": ["format", "f"],
        "kill": [],
        "delete": [],
        "state": [],
        "start": [],
        "pause": [],
        "resume": [],
        "features": [],
    ]

    public static func parse(_ arguments: [String]) throws -> RuntimeCommandLine {
        var line = RuntimeCommandLine()
        var index = 0
        func split(_ word: String) -> (name: String, value: String?) {
            let name = word.drop { $0 == "-" }
            if let equals = name.firstIndex(of: "=") { return (String(name[..<equals]), String(name[name.index(after: equals)...])) }
            return (String(name), nil)
        }
        // Global flags, up to the command.
        while index < arguments.count, arguments[index].hasPrefix("-") {
            let (name, inline) = split(arguments[index])
            index += 1
            if globalSwitches.contains(name) {
                switch name {
                case "debug": line.debug = true
                case "systemd-cgroup": line.systemdCgroup = true
                case "version", "v": line.command = "--version"
                default: line.command = "--help"
                }
                continue
            }
            guard globalValues.contains(name) else {
                throw VMFactoryError(.invalidArgument, "unknown global flag --\(name)", hint: "vmfactory-runtime --help lists them")
            }
            guard let value = inline ?? (index < arguments.count ? arguments[index] : nil) else {
                throw VMFactoryError(.invalidArgument, "--\(name) needs a value", hint: "vmfactory-runtime --help")
            }
            if inline == nil { index += 1 }
            switch name {
            case "root": line.root = value
            case "log": line.log = value
            case "config": line.config = value
            case "log-format":
                guard let format = RuntimeLog.Format(rawValue: value) else {
                    throw VMFactoryError(.invalidArgument, "--log-format \(value): text or json", hint: "vmfactory-runtime --help")
                }
                line.logFormat = format
            default: line.ignored.append("--\(name)")
            }
        }
        if !line.command.isEmpty { return line }
        guard index < arguments.count else { line.command = "--help"; return line }
        line.command = arguments[index]
        index += 1
        let valued = Self.valued[line.command] ?? []
        while index < arguments.count {
            let word = arguments[index]
            index += 1
            if word == "--" {
                line.positionals += arguments[index...]
                break
            }
            guard word.hasPrefix("-"), word.count > 1 else {
                line.positionals.append(word)
                continue
            }
            let (name, inline) = split(word)
            if valued.contains(name) {
                guard let value = inline ?? (index < arguments.count ? arguments[index] : nil) else {
                    throw VMFactoryError(.invalidArgument, "\(line.command) --\(name) needs a value", hint: "vmfactory-runtime --help")
                }
                if inline == nil { index += 1 }
                line.flags[name] = value
            } else {
                line.flags[name] = inline ?? "true"
            }
        }
        return line
    }

    public func flag(_ names: String...) -> String? {
        for name in names { if let value = flags[name] { return value } }
        return nil
    }

    public func isSet(_ names: String...) -> Bool {
        names.contains { flags[$0] != nil && flags[$0] != "false" }
    }

    /// The container's id: the command's one positional argument (kill's first).
    public func containerID() throws -> String {
        guard let id = positionals.first, !id.isEmpty else {
            throw VMFactoryError(.invalidArgument, "\(command) needs the container's id", hint: "vmfactory-runtime \(command) [FLAGS] ID")
        }
        guard id.allSatisfy({ $0.isLetter || $0.isNumber || "_-.".contains($0) }), !id.hasPrefix("."), id.count <= 1024 else {
            throw VMFactoryError(.invalidArgument, "\(id) is not a container id (letters, digits, '_', '-', '.')", hint: "use the id the engine gave")
        }
        return id
    }
}
