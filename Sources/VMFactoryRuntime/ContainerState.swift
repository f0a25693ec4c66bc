import Foundation
import VMFactoryCore

/// What the runtime keeps of one container, in `<root>/<id>/state.json`: written by `create`,
/// its status kept current by the container's supervisor (its pid), read by every other call.
public struct ContainerState: Codable, Sendable {
    public enum Status: String, Codable, Sendable {
        case creating, created, running, paused, stopped
    }

    public var id: String
    public var bundle: String
    /// The supervisor: the container's pid, a descendant of `create`.
    public var pid: Int32
    /// The supervisor's start time (in clock ticks since boot, /proc/PID/stat's 22nd field):
    /// a pid reused by another process is not the container.
    public var pidStart: UInt64
    /// The run's id among the runtime's runs (its folder, its control socket).
    public var runID: String
    public var status: Status
    public var created: Date
    public var annotations: [String: String]

    /// The container's folder under the runtime's root.
    public static func folder(root: String, id: String) -> String { root + "/" + id }

    public static func load(root: String, id: String) throws -> ContainerState? {
        let path = folder(root: root, id: id) + "/state.json"
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        do {
            let decoder = JSONDecoder()
            decoder.dateDecodingStrategy = .iso8601
            return try decoder.decode(ContainerState.self, from: data)
        } catch {
            throw VMFactoryError(.invalidArgument, "the state of container \(id) (\(path)) is damaged: \(error)", hint: "delete it with `vmfactory-runtime delete --force \(id)`")
        }
    }

    public func write(root: String) throws {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys]
        let data = try encoder.encode(self)
        try FileStore.writeAtomically(String(decoding: data, as: UTF8.self) + "\n", to: Self.folder(root: root, id: id) + "/state.json")
    }

    /// Whether the supervisor still runs: the same process (its start time), not a zombie.
    public var supervisorAlive: Bool {
        guard pid > 0, let stat = Self.processStat(pid) else { return false }
        return stat.state != "Z" && stat.state != "X" && stat.start == pidStart
    }

    /// The status as it is now: stopped once the supervisor is gone, whatever the file says.
    public var currentStatus: Status {
        if status == .creating || status == .stopped { return status }
        return supervisorAlive ? status : .stopped
    }

    /// /proc/PID/stat's state, parent and start time.
    public static func processStat(_ pid: Int32) -> (state: Character, parent: Int32, start: UInt64)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        // After "pid (comm) ": state is field 3, the parent field 4, starttime field 22.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let state = fields[0].first, let parent = Int32(fields[1]), let start = UInt64(fields[19]) else { return nil }
        return (state, parent, start)
    }

    /// The OCI state document `state` prints.
    public var ociState: [String: Any] {
        let status = currentStatus
        return [
            "ociVersion": "1.0.2", "id": id, "status": (status == .creating ? Status.created : status).rawValue,
            "pid": status == .stopped ? 0 : Int(pid), "bundle": bundle, "annotations": annotations,
        ]
    }
}

/// Where `--log` goes, in the form `--log-format` asks for: JSON lines (`{"level":…,"msg":…,
/// "time":…}`, what docker shows its user) or text. Errors go to stderr as well.
public struct RuntimeLog: Sendable {
    public enum Format: String, Sendable, CaseIterable {
        case text, json
    }

    public var path: String?
    public var format: Format = .text
    public var debug = false

    public init(path: String?, format: Format, debug: Bool) {
        self.path = path
        self.format = format
        self.debug = debug
    }

    public func error(_ message: String) {
        write("error", message)
        FileHandle.standardError.write(Data(("vmfactory-runtime: error: " + message + "\n").utf8))
    }

    public func warning(_ message: String) { write("warning", message) }

    public func debug(_ message: String) {
        guard debug else { return }
        write("debug", message)
    }

    private func write(_ level: String, _ message: String) {
        guard let path else { return }
        let time = ISO8601DateFormatter().string(from: Date())
        let line: String
        switch format {
        case .json:
            let object: [String: String] = ["level": level, "msg": message, "time": time]
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
            line = String(decoding: data, as: UTF8.self) + "\n"
        case .text:
            line = "time=\"\(time)\" level=\(level) msg=\"\(message.replacingOccurrences(of: "\"", with: "\\\""))\"\n"
        }
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        defer { close(fd) }
        _ = Array(line.utf8).withUnsafeBytes { try? FileStore.writeAll(fd, $0, path: path) }
    }
}

/// The runtime's own settings, from `--config FILE`, else `vmfactory-runtime.json` beside
/// `--root`, else `/etc/vmfactory/runtime.json`, else the defaults.
public struct RuntimeConfiguration: Codable, Sendable {
    /// Where the kernels are: outputs/<recipe>/<target>/ (default: the checkout's outputs/).
    public var outputDirectory: String?
    /// The kernel recipe (default: container).
    public var recipe: String?
    /// A published kernel image to run with instead (oci:DIR[:TAG], oci-archive:FILE, docker://…);
    /// the annotation `dev.vmfactory.kernel-image` of a container says the same for it.
    public var kernelImage: String?
    /// Where the runs' folders go: short, for their sockets' paths (default: /run/vmfactory-runtime).
    public var runDirectory: String?
    /// Who QEMU runs as (default: nobody:nogroup).
    public var vmmUser: String?
    /// The guest's memory when the container has no memory limit (default: 512).
    public var memoryMiB: Int?

    public init() {}

    public static let fileName = "vmfactory-runtime.json"
    public static let systemPath = "/etc/vmfactory/runtime.json"

    public static func load(explicit: String?, root: String) throws -> RuntimeConfiguration {
        let candidates = explicit.map { [$0] } ?? [(root as NSString).deletingLastPathComponent + "/" + fileName, systemPath]
        for path in candidates {
            guard let data = FileManager.default.contents(atPath: path) else {
                if explicit != nil { throw VMFactoryError(.notFound, "no runtime configuration at \(path)", hint: "give --config an existing file") }
                continue
            }
            do {
                return try JSONDecoder().decode(RuntimeConfiguration.self, from: data)
            } catch {
                throw VMFactoryError(.invalidArgument, "the runtime configuration \(path) is not valid: \(error)", hint: "see docs/runtimes.md for its keys")
            }
        }
        return RuntimeConfiguration()
    }
}
