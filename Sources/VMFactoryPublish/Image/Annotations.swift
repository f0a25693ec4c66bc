import Foundation
import VMFactoryCore

/// The annotation keys of a published image: the OCI image spec's pre-defined ones
/// (annotations.md) and vmfactory's own, under `dev.vmfactory.`.
public enum AnnotationKey {
    public static let created = "org.opencontainers.image.created"
    public static let version = "org.opencontainers.image.version"
    public static let title = "org.opencontainers.image.title"
    public static let source = "org.opencontainers.image.source"
    public static let revision = "org.opencontainers.image.revision"
    public static let refName = "org.opencontainers.image.ref.name"

    public static let recipe = "dev.vmfactory.recipe"
    public static let target = "dev.vmfactory.target"
    public static let buildKey = "dev.vmfactory.build-key"
    public static let inputKey = "dev.vmfactory.input-key"
    /// The sha256 of the kernel image a runtime boots (`dev.vmfactory.kernel.path`).
    public static let kernelSHA256 = "dev.vmfactory.kernel.sha256"
    public static let kernelPath = "dev.vmfactory.kernel.path"
    public static let initrdSHA256 = "dev.vmfactory.initrd.sha256"
    public static let initrdPath = "dev.vmfactory.initrd.path"
    public static let cmdline = "dev.vmfactory.cmdline"
}

/// Where the published build came from: the checkout's public address and the commit it
/// publishes from, when it has them. A local path is no address another machine can reach,
/// so it is left out; a checkout with changes to tracked files names no commit.
public struct Provenance: Sendable, Equatable {
    public var source: String?
    public var revision: String?

    public init(source: String? = nil, revision: String? = nil) {
        self.source = source
        self.revision = revision
    }

    /// Asks git about the checkout at `root`; nothing when it is not a git checkout or git
    /// is missing.
    public static func of(checkout root: String, runner: any ProcessRunner) async -> Provenance {
        guard FileStore.exists(root + "/.git") else { return Provenance() }
        func git(_ arguments: [String]) async -> String? {
            guard let result = try? await runner.run(Command("git", ["-C", root] + arguments), output: .stdoutApart), result.succeeded else { return nil }
            let text = result.output.trimmingCharacters(in: .whitespacesAndNewlines)
            return text.isEmpty ? nil : text
        }
        // A commit names what published only when nothing tracked differs from it.
        let changed = await git(["status", "--porcelain", "--untracked-files=no"])
        let revision = changed == nil ? await git(["rev-parse", "--verify", "HEAD"]) : nil
        let source = await git(["remote", "get-url", "origin"]).flatMap(publicAddress)
        return Provenance(source: source, revision: revision)
    }

    /// `https://host/path` for a remote another machine can reach (credentials removed), nil
    /// for a local path.
    public static func publicAddress(_ remote: String) -> String? {
        if remote.hasPrefix("https://") || remote.hasPrefix("http://") || remote.hasPrefix("ssh://") || remote.hasPrefix("git://") {
            guard var components = URLComponents(string: remote), components.host != nil else { return nil }
            components.user = nil
            components.password = nil
            return components.string
        }
        // scp-like `git@host:owner/repo.git`: a user, a host, a colon before any slash.
        if let colon = remote.firstIndex(of: ":"), let at = remote[..<colon].firstIndex(of: "@"), !remote[..<colon].contains("/") {
            let host = remote[remote.index(after: at)..<colon]
            let path = remote[remote.index(after: colon)...]
            guard !host.isEmpty, !path.isEmpty else { return nil }
            return "https://\(host)/\(path)"
        }
        return nil
    }
}

/// RFC 3339 in UTC, as OCI's `created` wants: `2024-05-01T00:00:00Z`.
public func rfc3339(epoch: Int) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.timeZone = TimeZone(identifier: "UTC")
    formatter.formatOptions = [.withInternetDateTime]
    return formatter.string(from: Date(timeIntervalSince1970: TimeInterval(epoch)))
}

/// The compact JSON of blobs: keys sorted, no blanks, slashes as they are, so that equal
/// values give equal digests.
enum BlobJSON {
    static func encode<T: Encodable>(_ value: T) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do {
            return try encoder.encode(value)
        } catch {
            throw VMFactoryError(.internalError, "cannot encode \(T.self) as JSON: \(error)", hint: "this is a fault in vmfactory; report the command line")
        }
    }
}
