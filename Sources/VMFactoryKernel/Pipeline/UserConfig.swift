import Foundation
import VMFactoryCore
import Yams

/// The user's own settings, `$XDG_CONFIG_HOME/vmfactory/config.yaml` (else
/// `~/.config/vmfactory/config.yaml`):
///
///     build:
///       distcc: "10.0.0.2/8 10.0.0.3/8"
///
/// Command-line options and the environment come first; the file fills in what they leave.
public struct UserConfig: Sendable, Equatable {
    /// `build.distcc`: a distcc host list for every build.
    public var distcc: String?

    public init(distcc: String? = nil) {
        self.distcc = distcc
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

    static let knownBuildKeys: Set<String> = ["distcc"]

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
                throw VMFactoryError(.invalidArgument, "\(path): unknown key '\(key.string ?? "?")'", hint: "the file knows build.distcc")
            }
            guard let build = value.mapping else {
                throw VMFactoryError(.invalidArgument, "\(path): build is not a mapping", hint: "write `distcc: HOSTS` below `build:`")
            }
            for (name, entry) in build {
                guard let name = name.string, knownBuildKeys.contains(name) else {
                    throw VMFactoryError(.invalidArgument, "\(path): unknown key build.\(name.string ?? "?")", hint: "the file knows build.distcc")
                }
                guard let hosts = entry.scalar?.string, !hosts.isEmpty else {
                    throw VMFactoryError(.invalidArgument, "\(path): build.distcc is not a host list", hint: "write it as distcc takes it, such as \"10.0.0.2/8 10.0.0.3/8\"")
                }
                config.distcc = hosts
            }
        }
        return config
    }

    /// The distcc hosts a build uses, `--distcc`, else `$DISTCC_HOSTS`, else `build.distcc`,
    /// and where they came from.
    public static func distcc(option: String?, disabled: Bool, environment: [String: String]) throws -> (hosts: String, source: String)? {
        if disabled { return nil }
        if let option { return (option, "--distcc") }
        if let hosts = environment["DISTCC_HOSTS"], !hosts.trimmingCharacters(in: .whitespaces).isEmpty { return (hosts, "$DISTCC_HOSTS") }
        guard let hosts = try load(environment: environment).distcc else { return nil }
        return (hosts, "build.distcc in " + (path(environment: environment) ?? "the user config"))
    }
}
