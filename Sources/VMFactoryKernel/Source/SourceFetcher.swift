import Foundation
import VMFactoryArchive
import VMFactoryCore

/// A verified source file in the cache, and where its bytes first came from.
public struct FetchedSource: Sendable, Codable {
    public var path: String
    public var sha256: SHA256Digest
    public var origin: SourceOrigin?
    public var wasCached: Bool

    enum CodingKeys: String, CodingKey {
        case path, sha256, origin
        case wasCached = "cached"
    }
}

/// Gets the pinned bytes of a source, trying in order: the cache; the recipe's own paths and
/// the source search path (any file whose sha256 is the pin); `apt-get download`; URLs.
/// Whatever the route, bytes are hashed while they stream and cached only when they match.
public struct SourceFetcher: Sendable {
    public var cache: SourceCache
    /// Folders searched for a file with the pinned sha256.
    public var searchPath: [String]
    public var useApt: Bool
    public var useNetwork: Bool
    public var runner: any ProcessRunner
    public var console: Console

    public init(cache: SourceCache, searchPath: [String], useApt: Bool = true, useNetwork: Bool = true, runner: any ProcessRunner, console: Console) {
        self.cache = cache
        self.searchPath = searchPath
        self.useApt = useApt
        self.useNetwork = useNetwork
        self.runner = runner
        self.console = console
    }

    /// The default search path: `--source-dir` folders, then `$VMFACTORY_SOURCE_PATH`
    /// (colon-separated), then /usr/src, where Debian's linux-source packages put their tarball.
    public static func searchPath(sourceDirs: [String], environment: [String: String], currentDirectory: String) -> [String] {
        let fromEnvironment = (environment["VMFACTORY_SOURCE_PATH"] ?? "").split(separator: ":").map(String.init)
        return (sourceDirs + fromEnvironment + ["/usr/src"]).map { FileStore.absolute($0, relativeTo: currentDirectory) }
    }

    public func fetch(_ pin: SourcePin) async throws -> FetchedSource {
        let digest = pin.sha256
        if cache.contains(digest) {
            return FetchedSource(path: cache.path(for: digest), sha256: digest, origin: cache.origin(of: digest), wasCached: true)
        }
        cache.removeStaleTemporaries()
        var attempts: [String] = []
        let label = pin.fileName ?? digest.short
        for candidate in localCandidates(pin) {
            let origin = SourceOrigin(kind: .path, location: candidate.path)
            do {
                let path = try await copyIntoCache(candidate.path, pin: pin, origin: origin, label: label)
                return FetchedSource(path: path, sha256: digest, origin: origin, wasCached: false)
            } catch let error as VMFactoryError where error.code == .digestMismatch {
                // Files found by scanning a folder are expected to be other files; named ones are not.
                if candidate.named {
                    console.warning(error.message)
                    attempts.append(error.message)
                }
            } catch let error as VMFactoryError where error.code == .interrupted {
                throw error
            } catch {
                attempts.append("\(candidate.path): \(VMFactoryError(error).message)")
            }
        }
        if let apt = pin.apt {
            if !useApt {
                attempts.append("apt \(apt.package)=\(apt.version): skipped (offline)")
            } else if let found = try await attempt("apt \(apt.package)=\(apt.version)", &attempts, { try await fetchFromApt(apt, pin: pin, label: label) }) {
                return found
            }
        }
        for url in pin.urls {
            if let found = try await fetch(url, pin: pin, label: label, attempts: &attempts) { return found }
        }
        throw VMFactoryError(
            .fetchFailed, "cannot obtain \(label) (sha256 \(digest))",
            hint: "put the file in a folder and pass --source-dir FOLDER (or add it to VMFACTORY_SOURCE_PATH)"
                + (pin.apt.map { "; or run `apt-get update` so that `apt-get download \($0.package)=\($0.version)` works" } ?? ""),
            details: ["searched: " + (searchPath.isEmpty ? "(no folders)" : searchPath.joined(separator: ", "))] + attempts
        )
    }

    /// A `file:` URL is copied like a local file; others are downloaded unless offline.
    private func fetch(_ url: String, pin: SourcePin, label: String, attempts: inout [String]) async throws -> FetchedSource? {
        guard let parsed = URL(string: url) else { return nil }
        if parsed.isFileURL {
            return try await attempt(url, &attempts) {
                let origin = SourceOrigin(kind: .url, location: url)
                let path = try await copyIntoCache(parsed.path, pin: pin, origin: origin, label: label)
                return FetchedSource(path: path, sha256: pin.sha256, origin: origin, wasCached: false)
            }
        }
        guard useNetwork else {
            attempts.append("\(url): skipped (offline)")
            return nil
        }
        return try await attempt(url, &attempts) { try await download(parsed, pin: pin, label: label) }
    }

    /// One way of getting the bytes: a failure is noted for the final error and the next way is
    /// tried, except an interruption, which ends the fetch.
    private func attempt(_ what: String, _ attempts: inout [String], _ body: () async throws -> FetchedSource) async throws -> FetchedSource? {
        do {
            return try await body()
        } catch let error as VMFactoryError where error.code == .interrupted {
            throw error
        } catch {
            attempts.append("\(what): \(VMFactoryError(error).message)")
            return nil
        }
    }

    /// Recipe paths first, then in each search folder: the file named like the pin, files a
    /// SHA256SUMS there lists with the pin, then every other regular file.
    func localCandidates(_ pin: SourcePin) -> [(path: String, named: Bool)] {
        var seen = Set<String>()
        var result: [(String, Bool)] = []
        func add(_ path: String, named: Bool) {
            let resolved = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
            guard FileStore.isRegularFile(resolved), seen.insert(resolved).inserted else { return }
            result.append((path, named))
        }
        for path in pin.paths { add(path, named: true) }
        for folder in searchPath where FileStore.isDirectory(folder) {
            if let name = pin.fileName { add(folder + "/" + name, named: true) }
            for sums in ["SHA256SUMS", "sha256sums", "SHA256SUMS.txt"] {
                guard let text = try? String(contentsOfFile: folder + "/" + sums, encoding: .utf8) else { continue }
                for line in text.split(separator: "\n") {
                    let words = line.split(separator: " ", maxSplits: 1)
                    if words.count == 2, words[0].lowercased() == pin.sha256.hex {
                        add(folder + "/" + words[1].trimmingCharacters(in: CharacterSet(charactersIn: " *")), named: true)
                    }
                }
            }
        }
        for folder in searchPath where FileStore.isDirectory(folder) {
            for name in ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).sorted() where !name.hasPrefix(".") {
                add(folder + "/" + name, named: false)
            }
        }
        return result
    }

    private func copyIntoCache(_ path: String, pin: SourcePin, origin: SourceOrigin, label: String) async throws -> String {
        let total = FileStore.fileSize(path)
        let start = ContinuousClock.now
        let console = self.console
        let stored = try await cache.insert(expected: pin.sha256, origin: origin) { sink in
            try await BlockingWork.run("verifying \(FileStore.displayPath(path))") { cancellation in
                try FileStore.forEachChunk(ofFile: path, cancellation: cancellation) { chunk in
                    try sink.write(chunk)
                    Self.reportProgress(console, "verifying \(label) from \(FileStore.displayPath(path))", done: sink.bytesWritten, total: total, since: start)
                }
            }
        }
        console.endProgress()
        console.info("source: \(label) verified from \(FileStore.displayPath(path))")
        return stored
    }

    private func fetchFromApt(_ apt: AptSource, pin: SourcePin, label: String) async throws -> FetchedSource {
        try FileStore.createDirectory(cache.temporaryDirectory)
        let folder = FileStore.temporaryName(for: cache.temporaryDirectory + "/apt")
        try FileStore.createDirectory(folder)
        defer { try? FileStore.removeTree(folder) }
        console.info("source: apt-get download \(apt.package)=\(apt.version)")
        let command = Command("apt-get", ["download", "-q", "\(apt.package)=\(apt.version)"], workingDirectory: folder)
        try await runner.runChecked(command, what: "apt-get download \(apt.package)=\(apt.version)")
        guard let deb = try FileManager.default.contentsOfDirectory(atPath: folder).first(where: { $0.hasSuffix(".deb") }) else {
            throw VMFactoryError(.fetchFailed, "apt-get download left no .deb in \(folder)")
        }
        let origin = SourceOrigin(kind: .apt, location: "\(apt.package)=\(apt.version):\(apt.member)")
        let start = ContinuousClock.now
        let console = self.console
        let path = try await cache.insert(expected: pin.sha256, origin: origin) { sink in
            try await BlockingWork.run("unpacking \(deb)") { cancellation in
                try DebPackage.extractMember(apt.member, from: folder + "/" + deb) { chunk in
                    try cancellation.check()
                    try sink.write(chunk)
                    Self.reportProgress(console, "verifying \(label) from \(deb)", done: sink.bytesWritten, total: nil, since: start)
                }
            }
        }
        console.endProgress()
        return FetchedSource(path: path, sha256: pin.sha256, origin: origin, wasCached: false)
    }

    private func download(_ url: URL, pin: SourcePin, label: String) async throws -> FetchedSource {
        let origin = SourceOrigin(kind: .url, location: url.absoluteString)
        let start = ContinuousClock.now
        let console = self.console
        let path = try await cache.insert(expected: pin.sha256, origin: origin) { sink in
            try await HTTPDownload.stream(url, onChunk: { data in try sink.write(data) }) { received, expected in
                Self.reportProgress(console, "downloading \(label)", done: received, total: expected, since: start)
            }
        }
        console.endProgress()
        console.info("source: \(label) downloaded from \(url.absoluteString)")
        return FetchedSource(path: path, sha256: pin.sha256, origin: origin, wasCached: false)
    }

    static func reportProgress(_ console: Console, _ what: String, done: Int64, total: Int64?, since start: ContinuousClock.Instant) {
        let seconds = max((ContinuousClock.now - start).seconds, 0.001)
        let rate = ByteCount.format(Int64(Double(done) / seconds)) + "/s"
        if let total, total > 0 {
            let percent = Int(Double(done) * 100 / Double(total))
            console.progress("\(what): \(ByteCount.format(done)) of \(ByteCount.format(total)) (\(percent)%), \(rate)")
        } else {
            console.progress("\(what): \(ByteCount.format(done)), \(rate)")
        }
    }
}
