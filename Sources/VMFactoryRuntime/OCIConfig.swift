import Foundation
import VMFactoryCore

/// The part of an OCI bundle's `config.json` (runtime-spec 1.x) that a VM runtime reads. Fields
/// it does not know are kept out of the way, as runc's decoder does; what it reads and cannot
/// honour is said in docs/runtimes.md and logged with --debug.
public struct OCIConfig: Decodable, Sendable {
    public var ociVersion: String
    public var process: Process?
    public var root: Root?
    public var hostname: String?
    public var mounts: [Mount]?
    public var linux: Linux?
    public var annotations: [String: String]?

    public struct Process: Decodable, Sendable {
        public var terminal: Bool?
        public var user: User
        public var args: [String]?
        public var env: [String]?
        public var cwd: String
        public var capabilities: Capabilities?
        public var rlimits: [Rlimit]?
        public var noNewPrivileges: Bool?
    }

    public struct User: Decodable, Sendable {
        public var uid: UInt32
        public var gid: UInt32
        /// A user named in the image's /etc/passwd, whose uid and gid then replace these.
        public var username: String?
        public var additionalGids: [UInt32]?
        public var umask: UInt32?
    }

    public struct Capabilities: Decodable, Sendable {
        public var bounding: [String]?
        public var effective: [String]?
        public var inheritable: [String]?
        public var permitted: [String]?
        public var ambient: [String]?
    }

    public struct Rlimit: Decodable, Sendable {
        public var type: String
        public var hard: UInt64
        public var soft: UInt64
    }

    public struct Root: Decodable, Sendable {
        public var path: String
        public var readonly: Bool?
    }

    public struct Mount: Decodable, Sendable {
        public var destination: String
        public var type: String?
        public var source: String?
        public var options: [String]?
    }

    public struct Linux: Decodable, Sendable {
        public var namespaces: [Namespace]?
        public var resources: Resources?
    }

    public struct Namespace: Decodable, Sendable {
        public var type: String
        public var path: String?
    }

    public struct Resources: Decodable, Sendable {
        public var memory: Memory?
        public var cpu: CPU?
        public var pids: Pids?
    }

    public struct Memory: Decodable, Sendable {
        public var limit: Int64?
    }

    public struct CPU: Decodable, Sendable {
        public var quota: Int64?
        public var period: UInt64?
        public var cpus: String?
    }

    public struct Pids: Decodable, Sendable {
        public var limit: Int64
    }

    /// The bundle's config, read and checked: JSON, a 1.x version, a process with arguments, a
    /// root that is a folder.
    public static func load(bundle: String) throws -> (config: OCIConfig, root: String) {
        let path = bundle + "/config.json"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw VMFactoryError(.notFound, "the bundle \(bundle) has no config.json", hint: "give --bundle the folder that holds config.json and the root")
        }
        let config: OCIConfig
        do {
            config = try JSONDecoder().decode(OCIConfig.self, from: data)
        } catch let error as DecodingError {
            throw VMFactoryError(.invalidArgument, "\(path) is not an OCI runtime config: \(Self.describe(error))", hint: "check the file with `jq . \(path)`")
        } catch {
            throw VMFactoryError(.invalidArgument, "\(path) is not JSON: \(error.localizedDescription)", hint: "check the file with `jq . \(path)`")
        }
        guard config.ociVersion.split(separator: ".").first == "1" else {
            throw VMFactoryError(
                .invalidArgument, "\(path) is for OCI runtime spec \(config.ociVersion); vmfactory-runtime reads 1.x",
                hint: "make the bundle with a tool of runtime spec 1.x (podman, docker, containerd, umoci)"
            )
        }
        guard let process = config.process, let program = process.args?.first, !program.isEmpty else {
            throw VMFactoryError(.invalidArgument, "\(path) names no process to run (process.args is empty)", hint: "give the container a command")
        }
        _ = program
        guard let rootPath = config.root?.path, !rootPath.isEmpty else {
            throw VMFactoryError(.invalidArgument, "\(path) has no root.path", hint: "give the bundle a root folder")
        }
        let root = FileStore.absolute(rootPath, relativeTo: bundle)
        guard FileStore.isDirectory(root) else {
            throw VMFactoryError(.notFound, "the bundle's root \(root) is not a folder", hint: "mount or unpack the container's root there first")
        }
        return (config, root)
    }

    static func describe(_ error: DecodingError) -> String {
        func at(_ context: DecodingError.Context) -> String {
            let path = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? "." + $0.stringValue }.joined()
            return path.isEmpty ? "" : " at \(path)"
        }
        switch error {
        case .keyNotFound(let key, let context): return "\(key.stringValue) is missing\(at(context))"
        case .typeMismatch(_, let context), .valueNotFound(_, let context): return "\(context.debugDescription)\(at(context))"
        case .dataCorrupted(let context): return "\(context.debugDescription)\(at(context))"
        @unknown default: return "\(error)"
        }
    }
}
