import Foundation
import VMFactoryCore

/// What `ps`, `inspect`, `wait` and `exec` know of a run: `<run folder>/run.json`, written
/// (through a temporary name) by the run's supervisor as the run starts, runs and ends.
public struct RunRecord: Codable, Sendable, Equatable {
    public enum Status: String, Codable, Sendable {
        case created, running, exited
    }

    public var id: String
    public var name: String?
    public var image: String
    public var command: [String]
    public var target: String
    public var created: Date
    public var started: Date?
    public var finished: Date?
    public var status: Status
    /// The command's exit status, or vmfactory's (docker's numbers: 125, 137, ...).
    public var exitCode: Int32?
    /// When vmfactory decided the status: why.
    public var message: String?
    /// `-p` as given: `HOST:PORT->GUEST/tcp`.
    public var ports: [String]
    /// The supervisor's pid (the container's pid for an OCI runtime).
    public var pid: Int32
    /// Where the supervisor answers (`vmfactory exec`, `stop`, `kill`, `wait`).
    public var controlSocket: String
    /// `run -d`: the run's output is in its log and its folder stays until `rm`.
    public var detached: Bool
    /// What an exec inherits unless it says otherwise: the run's user, folder and environment.
    public var user: String
    public var workdir: String
    public var environment: [String]

    public static let fileName = "run.json"

    public init(
        id: String, name: String?, image: String, command: [String], target: String, created: Date, status: Status,
        ports: [String], pid: Int32, controlSocket: String, detached: Bool, user: String, workdir: String, environment: [String]
    ) {
        self.id = id
        self.name = name
        self.image = image
        self.command = command
        self.target = target
        self.created = created
        self.status = status
        self.ports = ports
        self.pid = pid
        self.controlSocket = controlSocket
        self.detached = detached
        self.user = user
        self.workdir = workdir
        self.environment = environment
    }

    public static func read(folder: String) throws -> RunRecord {
        let data = try FileStore.readData(folder + "/" + fileName)
        do {
            return try decoder.decode(RunRecord.self, from: data)
        } catch {
            throw VMFactoryError(.invalidArgument, "\(folder)/\(fileName) is not a run's record: \(error)", hint: "remove the run's folder")
        }
    }

    public func write(folder: String) throws {
        try FileStore.writeAtomically(try Self.encoder.encode(self) + Data("\n".utf8), to: folder + "/" + Self.fileName, mode: 0o600)
    }

    /// How records are written, and printed by `ps --format json` and `inspect`.
    public static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }()

    static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }()

    /// docker's words for the status: "Up 3 minutes", "Exited (0) 2 seconds ago", "Created".
    public func statusText(now: Date = Date()) -> String {
        switch status {
        case .created: return "Created"
        case .running: return "Up " + Self.age(since: started ?? created, now: now)
        case .exited: return "Exited (\(exitCode ?? 0)) " + Self.age(since: finished ?? created, now: now) + " ago"
        }
    }

    /// "Less than a second", "5 seconds", "3 minutes", "2 hours", "4 days".
    public static func age(since: Date, now: Date = Date()) -> String {
        let seconds = Int(max(0, now.timeIntervalSince(since)))
        func unit(_ count: Int, _ name: String) -> String { "\(count) \(name)\(count == 1 ? "" : "s")" }
        switch seconds {
        case 0: return "Less than a second"
        case ..<60: return unit(seconds, "second")
        case ..<3600: return unit(seconds / 60, "minute")
        case ..<86400: return unit(seconds / 3600, "hour")
        default: return unit(seconds / 86400, "day")
        }
    }
}
