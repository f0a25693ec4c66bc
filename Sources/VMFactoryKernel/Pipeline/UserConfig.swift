import Foundation
import VMFactoryCore
import Yams

/// The user's own settings, `$XDG_CONFIG_HOME/vmfactory/config.yaml` (else
/// `~/.config/vmfactory/config.yaml`):
///
///     build:
///       distcc: "10.0.0.2/8 10.0.0.3/8"   # or
///       icecc: true
///
/// Command-line options and the environment come first; the file fills in what they leave.
public struct UserConfig: Sendable, Equatable {
    /// `build.distcc`: a distcc host list for every build.
    public var distcc: String?
    /// `build.icecc`: compile through icecream for every build.
    public var icecc: Bool

    public init(distcc: String? = nil, icecc: Bool = false) {
        self.distcc = distcc
        self.icecc = icecc
    }

    public static func path(environment: [String: String]) -> String? {
        if let config = environment["XDG_CONFIG_HOME"], !config.isEmpty { return config + "/vmfactory/config.yaml" }
        if let home = environment["HOME"], !home.isEmpty { return home + "/.config/vmfactory/config.yaml" }
        return nil
    }

    /// The file's settings; none when there is no file.
    public static func load(environment: [String: String]) throws -> UserConfig {
        guard let path = path(environment: environment), FileStore.isRegularFile(path) else { return UserConfig() }
        return try parse(try FileStore.readText(path), path: path)
    }

    static let knownBuildKeys: Set<String> = ["distcc", "icecc"]

    public static func parse(_ text: String, path: String) throws -> UserConfig {
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch {
            throw VMFactoryError(.invalidArgument, "\(path) is not valid YAML: \(error)", hint: "fix the file or remove it")
        }
        guard let root = node?.mapping else {
            if node == nil || node?.scalar?.string.isEmpty == true { return UserConfig() }
            throw VMFactoryError(.invalidArgument, "\(path) is not a mapping", hint: "write `build:` with `distcc: HOSTS` below it")
        }
        var config = UserConfig()
        for (key, value) in root {
            guard key.string == "build" else {
                throw VMFactoryError(.invalidArgument, "\(path): unknown key '\(key.string ?? "?")'", hint: "the file knows build.distcc and build.icecc")
            }
            guard let build = value.mapping else {
                throw VMFactoryError(.invalidArgument, "\(path): build is not a mapping", hint: "write `distcc: HOSTS` below `build:`")
            }
            for (name, entry) in build {
                guard let name = name.string, knownBuildKeys.contains(name) else {
                    throw VMFactoryError(.invalidArgument, "\(path): unknown key build.\(name.string ?? "?")", hint: "the file knows build.distcc and build.icecc")
                }
                if name == "icecc" {
                    guard let on = entry.scalar.flatMap(Bool.construct(from:)) else {
                        throw VMFactoryError(.invalidArgument, "\(path): build.icecc is not true or false", hint: "write `icecc: true` to compile through this machine's iceccd")
                    }
                    config.icecc = on
                    continue
                }
                guard let hosts = entry.scalar?.string, !hosts.isEmpty else {
                    throw VMFactoryError(.invalidArgument, "\(path): build.distcc is not a host list", hint: "write it as distcc takes it, such as \"10.0.0.2/8 10.0.0.3/8\"")
                }
                config.distcc = hosts
            }
        }
        if config.icecc, config.distcc != nil {
            throw VMFactoryError(.invalidArgument, "\(path): build.distcc and build.icecc both set", hint: "keep one: a build compiles through one engine")
        }
        return config
    }

    /// The helpers a build compiles on: `--icecc`, else `--distcc`, else `$DISTCC_HOSTS`,
    /// else the file's `build.icecc` or `build.distcc`; `--no-icecc` and `--no-distcc` each
    /// turn their engine off.
    public static func helpers(distcc: String?, icecc: Bool, noDistcc: Bool, noIcecc: Bool, environment: [String: String]) throws -> CompileHelpers? {
        if icecc { return .icecc(source: "--icecc") }
        if !noDistcc, let hosts = distcc { return .distcc(hosts: hosts, source: "--distcc") }
        if !noDistcc, let hosts = environment["DISTCC_HOSTS"], !hosts.trimmingCharacters(in: .whitespaces).isEmpty {
            return .distcc(hosts: hosts, source: "$DISTCC_HOSTS")
        }
        let config = try load(environment: environment)
        let file = path(environment: environment) ?? "the user config"
        if config.icecc, !noIcecc { return .icecc(source: "build.icecc in " + file) }
        if let hosts = config.distcc, !noDistcc { return .distcc(hosts: hosts, source: "build.distcc in " + file) }
        return nil
    }
}
