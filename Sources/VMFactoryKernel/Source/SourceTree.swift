import Foundation
import VMFactoryArchive
import VMFactoryCore

/// An extracted and patched kernel source, shared read-only by every build that needs it.
public struct SourceTree: Sendable, Codable {
    /// Covers the tarball's sha256 and the exact bytes of the patch series.
    public var key: SHA256Digest
    /// The kernel source root (holds the top-level Makefile).
    public var path: String
    public var sourceSHA256: SHA256Digest
    public var patches: [PatchSeries.Patch]
    public var seriesName: String?
}

/// `trees/<key>/linux` in the cache. A tree is made under a temporary name and renamed to
/// its key only once it is completely extracted, patched and made read-only, so a run that
/// is killed part-way leaves nothing a later run would take for a finished tree.
public struct SourceTreeStore: Sendable {
    public let root: String
    public var runner: any ProcessRunner
    public var console: Console

    public init(cacheDirectory: String, runner: any ProcessRunner, console: Console) {
        root = cacheDirectory + "/trees"
        self.runner = runner
        self.console = console
    }

    public static func key(source: SHA256Digest, series: PatchSeries?) -> SHA256Digest {
        var builder = KeyBuilder("vmfactory source tree v1")
        builder.add("source", source.hex)
        builder.add("strip", "top-directory")
        for patch in series?.patches ?? [] {
            builder.add("patch", "\(patch.name) \(patch.sha256.hex)")
        }
        return builder.digest
    }

    func directory(for key: SHA256Digest) -> String { root + "/" + key.hex }
    private func manifestPath(for key: SHA256Digest) -> String { directory(for: key) + "/tree.json" }

    /// The finished tree for `key`, if one exists.
    public func existing(_ key: SHA256Digest) -> SourceTree? {
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: manifestPath(for: key))),
              let tree = try? JSONDecoder().decode(SourceTree.self, from: data),
              tree.key == key, FileStore.isRegularFile(tree.path + "/Makefile")
        else { return nil }
        return tree
    }

    /// Returns the tree for `tarball` with `series` applied, making it if needed.
    public func prepare(tarball: FetchedSource, series: PatchSeries?) async throws -> SourceTree {
        let key = Self.key(source: tarball.sha256, series: series)
        if let tree = existing(key) { return tree }
        try FileStore.createDirectory(root)
        let lock = try await FileLock.acquire(root + "/\(key.hex).lock") {
            console.info("waiting for another vmfactory that is preparing source tree \(key.short)")
        }
        defer { lock.release() }
        if let tree = existing(key) { return tree }
        for leftover in FileStore.removeLeftovers(of: directory(for: key)) {
            console.info("removed an unfinished source tree left by an interrupted run: \(URL(fileURLWithPath: leftover).lastPathComponent)")
        }

        let partial = FileStore.temporaryName(for: directory(for: key))
        do {
            let tree = try await build(key: key, tarball: tarball, series: series, in: partial)
            try FileStore.rename(partial, to: directory(for: key))
            return tree
        } catch {
            await BlockingWork.finish { try? FileStore.removeTree(partial) }
            throw error
        }
    }

    private func build(key: SHA256Digest, tarball: FetchedSource, series: PatchSeries?, in partial: String) async throws -> SourceTree {
        let source = partial + "/linux"
        let total = FileStore.fileSize(tarball.path) ?? 0
        let start = ContinuousClock.now
        console.progress("extracting \(URL(fileURLWithPath: tarball.path).lastPathComponent.prefix(12))…: starting", force: true)
        let console = self.console
        let summary = try await BlockingWork.run("extracting \(FileStore.displayPath(tarball.path))") { cancellation in
            try ArchiveExtractor.extract(archive: tarball.path, into: source, stripTopDirectory: true, expected: tarball.sha256, cancellation: cancellation) { read, entries in
                let percent = total > 0 ? Int(Double(read) * 100 / Double(total)) : 0
                let seconds = Int((ContinuousClock.now - start).seconds)
                console.progress("extracting source \(tarball.sha256.short): \(percent)% (\(entries) files, \(seconds)s)")
            }
        }
        console.endProgress()
        console.info(String(format: "source: extracted %d entries in %.1f s", summary.entries, (ContinuousClock.now - start).seconds))
        try Task.checkCancellation()
        guard FileStore.isRegularFile(source + "/Makefile"), FileStore.isRegularFile(source + "/Kconfig") else {
            throw VMFactoryError(.archiveFailed, "\(tarball.path) does not hold a kernel source tree (no Makefile and Kconfig at its top)")
        }

        for (index, patch) in (series?.patches ?? []).enumerated() {
            console.info("patch [\(index + 1)/\(series?.patches.count ?? 0)] \(patch.name)")
            try await apply(patch, index: index, series: series!, to: source)
        }

        // Builds are out-of-tree; a read-only tree makes any write into it fail loudly.
        try await BlockingWork.run("making the source tree read-only") { _ in FileStore.makeReadOnly(source) }
        let tree = SourceTree(key: key, path: directory(for: key) + "/linux", sourceSHA256: tarball.sha256, patches: series?.patches ?? [], seriesName: series?.name)
        try FileStore.writeAtomically(try JSON.encode(tree), to: partial + "/tree.json")
        return tree
    }

    /// Applies one patch with GNU patch: no fuzz, no reversed patches, no backup files.
    func apply(_ patch: PatchSeries.Patch, index: Int, series: PatchSeries, to source: String) async throws {
        let command = Self.patchCommand(patch: patch.path, tree: source)
        let result = try await runner.run(command, output: .capture)
        guard result.succeeded else {
            let failures = Self.failedHunks(in: result.output, patchFile: patch.path)
            throw VMFactoryError(
                .patchFailed,
                "patch \(patch.name) (\(FileStore.displayPath(series.seriesFile)) entry \(index + 1)) does not apply: "
                    + (failures.isEmpty ? "patch reported \(result.statusDescription)" : failures.joined(separator: "; ")),
                hint: "refresh \(FileStore.displayPath(patch.path)) against this kernel source, or drop it from the series",
                details: ["command: \(command)"] + result.output.split(separator: "\n").suffix(20).map { "| " + $0 }
            )
        }
    }

    public static func patchCommand(patch: String, tree: String) -> Command {
        Command("patch", ["-p1", "--forward", "--batch", "--fuzz=0", "--no-backup-if-mismatch", "--reject-file=-", "-d", tree, "-i", patch], workingDirectory: tree)
    }

    /// "FILE hunk #N (@@ header @@) FAILED at LINE" for each failed hunk in GNU patch's output.
    static func failedHunks(in output: String, patchFile: String) -> [String] {
        var results: [String] = []
        var currentFile = "?"
        let headers = hunkHeaders(patchFile: patchFile)
        for line in output.split(separator: "\n") {
            if line.hasPrefix("patching file ") {
                currentFile = String(line.dropFirst("patching file ".count)).trimmingCharacters(in: CharacterSet(charactersIn: "'"))
            } else if line.hasPrefix("Hunk #"), line.contains("FAILED") {
                let number = Int(line.dropFirst("Hunk #".count).prefix(while: \.isNumber)) ?? 0
                var text = "\(currentFile) hunk #\(number)"
                if let header = headers[currentFile]?[safe: number - 1] { text += " (\(header))" }
                if let range = line.range(of: "FAILED at ") { text += " failed at line \(line[range.upperBound...].trimmingCharacters(in: CharacterSet(charactersIn: ".")))" }
                results.append(text)
            } else if line.hasPrefix("can't find file to patch") {
                results.append("a file the patch changes does not exist (\(line))")
            } else if line.contains("Reversed (or previously applied) patch detected") {
                results.append("\(currentFile): already applied (reversed patch detected)")
            } else if line.contains("malformed patch") {
                results.append("malformed patch: \(line)")
            }
        }
        return results
    }

    /// The `@@ … @@` lines of each file in a unified diff, keyed by the path after `b/`.
    static func hunkHeaders(patchFile: String) -> [String: [String]] {
        guard let text = try? String(contentsOfFile: patchFile, encoding: .utf8) else { return [:] }
        var result: [String: [String]] = [:]
        var file: String? = nil
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("+++ ") {
                let path = line.dropFirst(4).split(separator: "\t").first.map(String.init) ?? ""
                file = path.split(separator: "/", maxSplits: 1).dropFirst().first.map(String.init) ?? path
            } else if line.hasPrefix("@@ "), let file {
                let header = line.split(separator: "@@", omittingEmptySubsequences: true).first.map { "@@ " + $0.trimmingCharacters(in: .whitespaces) + " @@" } ?? String(line)
                result[file, default: []].append(header)
            }
        }
        return result
    }
}

extension Array {
    subscript(safe index: Int) -> Element? {
        indices.contains(index) ? self[index] : nil
    }
}
