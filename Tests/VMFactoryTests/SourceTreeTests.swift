import Foundation
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryCore
@testable import VMFactoryKernel

@Suite("Source trees and patch series", .tags(.unit), .scoped)
struct SourceTreeTests {
    static let exitC = (1...40).map { "line \($0)\n" }.joined()

    /// A tarball shaped like a kernel source: one top folder with Makefile, Kconfig and kernel/exit.c.
    static func fakeKernel(at path: String, exitC: String = exitC) throws -> FetchedSource {
        try ArchiveWriter.write([
            .init(path: "linux-fake/", kind: .directory, mode: 0o755),
            .init(path: "linux-fake/Makefile", kind: .file(Data("all:\n".utf8))),
            .init(path: "linux-fake/Kconfig", kind: .file(Data("mainmenu \"fake\"\n".utf8))),
            .init(path: "linux-fake/kernel/", kind: .directory, mode: 0o755),
            .init(path: "linux-fake/kernel/exit.c", kind: .file(Data(exitC.utf8))),
        ], to: path, format: .paxTar, compression: .gzip)
        return FetchedSource(path: path, sha256: try SHA256Digest.ofFile(at: path), origin: nil, wasCached: true)
    }

    static let goodPatch = """
        Subject: change line 10

        --- a/kernel/exit.c
        +++ b/kernel/exit.c
        @@ -9,3 +9,3 @@
         line 9
        -line 10
        +line ten
         line 11

        """

    static let badPatch = """
        --- a/kernel/exit.c
        +++ b/kernel/exit.c
        @@ -19,3 +19,3 @@ int first_function(void)
         line 19
        -line 20
        +line twenty
         line 21
        @@ -29,3 +29,3 @@ int second_function(void)
         line 29
        -line thirty
        +line 30 changed
         line 31

        """

    static func series(_ dir: String, _ patches: [(String, String)]) throws -> PatchSeries {
        for (name, text) in patches { try TestSupport.write(text, to: dir + "/series-dir/\(name)") }
        try TestSupport.write(patches.map(\.0).joined(separator: "\n") + "\n", to: dir + "/series-dir/series")
        return try PatchSeries.load(name: "test", directory: dir + "/series-dir")
    }

    func store(_ cache: String) -> SourceTreeStore {
        SourceTreeStore(cacheDirectory: cache, runner: TestSupport.runner, console: .recording())
    }

    func treeEntries(_ cache: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: cache + "/trees")) ?? []).filter { !$0.hasSuffix(".lock") }.sorted()
    }

    @Test("a series applies in order into a read-only, content-addressed tree", .tags(.integration), .needsTool("patch"))
    func seriesApplies() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let tarball = try Self.fakeKernel(at: dir + "/linux-fake.tar.gz")
        let series = try Self.series(dir, [("0001-ten.patch", Self.goodPatch)])
        let tree = try await store(dir + "/cache").prepare(tarball: tarball, series: series)

        #expect(tree.key == SourceTreeStore.key(source: tarball.sha256, series: series))
        #expect(tree.path == dir + "/cache/trees/\(tree.key.hex)/linux")
        #expect(try String(contentsOfFile: tree.path + "/kernel/exit.c", encoding: .utf8).contains("line ten\nline 11"))
        #expect(tree.patches.map(\.name) == ["0001-ten.patch"])
        let mode = try #require(try FileManager.default.attributesOfItem(atPath: tree.path + "/kernel/exit.c")[.posixPermissions] as? Int)
        #expect(mode & 0o222 == 0, "tree files are read-only")
        #expect(treeEntries(dir + "/cache") == [tree.key.hex])

        // The same inputs reuse the tree; other patch bytes give another key.
        let again = try await store(dir + "/cache").prepare(tarball: tarball, series: series)
        #expect(again.key == tree.key)
        let changed = try Self.series(dir + "/other", [("0001-ten.patch", Self.goodPatch.replacingOccurrences(of: "Subject: change line 10", with: "Subject: other words"))])
        #expect(SourceTreeStore.key(source: tarball.sha256, series: changed) != tree.key)
        #expect(SourceTreeStore.key(source: tarball.sha256, series: nil) != tree.key)
        // A read-only tree can still be removed.
        try FileStore.removeTree(dir + "/cache")
        #expect(!FileStore.exists(dir + "/cache"))
    }

    @Test("a failing patch is named with the file and hunk that failed, and leaves no tree", .tags(.integration), .needsTool("patch"))
    func failingPatch() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let tarball = try Self.fakeKernel(at: dir + "/linux-fake.tar.gz")
        let series = try Self.series(dir, [("0001-ten.patch", Self.goodPatch), ("0002-bad.patch", Self.badPatch)])
        let error = try await #require(throws: VMFactoryError.self) {
            try await store(dir + "/cache").prepare(tarball: tarball, series: series)
        }
        #expect(error.code == .patchFailed)
        #expect(error.message.contains("patch 0002-bad.patch"))
        #expect(error.message.contains("series-dir/series entry 2"))
        #expect(error.message.contains("kernel/exit.c hunk #2 (@@ -29,3 +29,3 @@) failed at line 29"))
        #expect(!error.message.contains("hunk #1"))
        #expect(error.hint?.contains("0002-bad.patch") == true)
        #expect(treeEntries(dir + "/cache").isEmpty, "left behind: \(treeEntries(dir + "/cache"))")
    }

    @Test("an extraction that fails part-way leaves nothing that a later run reuses")
    func truncatedTarball() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let good = try Self.fakeKernel(at: dir + "/good.tar.gz", exitC: String(repeating: Self.exitC, count: 2000))
        let bytes = try Data(contentsOf: URL(fileURLWithPath: good.path))
        try TestSupport.write(bytes.prefix(bytes.count / 2), to: dir + "/cut.tar.gz")
        // The truncated file is pinned with the good file's digest, as a cache entry damaged on disk would be.
        let cut = FetchedSource(path: dir + "/cut.tar.gz", sha256: good.sha256, origin: nil, wasCached: true)

        let error = try await #require(throws: VMFactoryError.self) { try await store(dir + "/cache").prepare(tarball: cut, series: nil) }
        #expect(error.code == .archiveFailed || error.code == .digestMismatch)
        #expect(treeEntries(dir + "/cache").isEmpty)

        let tree = try await store(dir + "/cache").prepare(tarball: good, series: nil)
        #expect(try String(contentsOfFile: tree.path + "/kernel/exit.c", encoding: .utf8).count == Self.exitC.count * 2000)
    }

    @Test("a half-made tree left by a killed run is removed, never used")
    func abandonedPartialTree() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let tarball = try Self.fakeKernel(at: dir + "/linux-fake.tar.gz")
        let key = SourceTreeStore.key(source: tarball.sha256, series: nil)
        // A process id no process has now, as a killed run's would be.
        let dead = try #require(stride(from: pid_t(4_000_000), to: 300, by: -1).first { kill($0, 0) != 0 && errno == ESRCH })
        let partial = dir + "/cache/trees/.\(key.hex).\(dead)-1.partial"
        try TestSupport.write("half\n", to: partial + "/linux/Makefile")

        let tree = try await store(dir + "/cache").prepare(tarball: tarball, series: nil)
        #expect(try String(contentsOfFile: tree.path + "/Makefile", encoding: .utf8) == "all:\n")
        #expect(!FileStore.exists(partial))
        #expect(treeEntries(dir + "/cache") == [key.hex])
    }
}

/// The pinned tarball extracted by the real command line, interrupted and resumed.
@Suite("Preparing the pinned source tree", .tags(.integration), .scoped, .needsPinnedKernel, .needsTool("patch"))
struct SourceTreeIntegrationTests {
    /// Starts `vmfactory prepare` into `cache` and returns once its extraction has visibly begun.
    static func prepareUntilExtracting(cache: String, stderr: Int32? = nil) async throws -> ChildProcess {
        let command = Command(TestSupport.executable, ["prepare", "--recipe", "minimal", "--cache-dir", cache, "--offline"])
        let vmfactory = try await ChildProcess.spawn(command, environment: TestSupport.environment, stdout: .null, stderr: stderr.map { .descriptor($0) } ?? .null)
        let extracting = await TestSupport.eventually(within: 300) {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: cache + "/trees")) ?? []
            guard let partial = names.first(where: { $0.hasSuffix(".partial") }) else { return vmfactory.hasExited }
            return ((try? FileManager.default.contentsOfDirectory(atPath: cache + "/trees/" + partial + "/linux"))?.count ?? 0) >= 3
        }
        #expect(extracting && !vmfactory.hasExited, "extraction was never seen under \(cache)/trees")
        return vmfactory
    }

    @Test("vmfactory prepare stopped during extraction: Ctrl-C exits 130 at once, SIGKILL leaves no finished tree; the next run succeeds")
    func killedDuringExtraction() async throws {
        let cache = try TestSupport.temporaryDirectory("cache")
        // Let the verified tarball come from the cache quickly: copy it in through a first fetch.
        let fetched = await TestSupport.runCommand(["fetch", "--recipe", "minimal", "--cache-dir", cache, "--offline"] + (try TestSupport.sourceDirArguments()))
        #expect(fetched.status == 0, "\(fetched.stderr)")

        // Ctrl-C reaches the extraction between two entries, not after the last one: the
        // extraction loop itself says at which entry it stopped, and never that it finished.
        let log = cache + "/prepare.stderr"
        let logFD = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        #expect(logFD >= 0)
        let interrupted = try await Self.prepareUntilExtracting(cache: cache, stderr: logFD)
        close(logFD)
        interrupted.signalLeader(SIGINT)
        #expect(await interrupted.wait() == .exited(130))
        let said = try String(contentsOfFile: log, encoding: .utf8)
        #expect(said.contains("interrupted while extracting") && said.contains("(at entry "), "\(said)")
        #expect(!said.contains("source: extracted"), "\(said)")
        try FileManager.default.removeItem(atPath: log)
        #expect(try FileManager.default.contentsOfDirectory(atPath: cache + "/trees").filter { !$0.hasSuffix(".lock") }.isEmpty)

        let killed = try await Self.prepareUntilExtracting(cache: cache)
        killed.signalLeader(SIGKILL)
        #expect(await killed.wait() == .signaled(SIGKILL))
        let entries = try FileManager.default.contentsOfDirectory(atPath: cache + "/trees").filter { !$0.hasSuffix(".lock") }
        #expect(entries.count == 1)
        #expect(entries.allSatisfy { $0.hasSuffix(".partial") }, "a tree looks finished after a kill: \(entries)")

        let rerun = await TestSupport.runCommand(["prepare", "--recipe", "minimal", "--cache-dir", cache, "--offline", "--format", "json"], runner: TestSupport.runner)
        #expect(rerun.status == 0, "\(rerun.stderr)")
        #expect(rerun.stderr.contains("removed an unfinished source tree left by an interrupted run"), "\(rerun.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(rerun.stdout.utf8)) as? [String: Any])
        let treePath = try #require(json["tree"] as? String)
        #expect(FileStore.isRegularFile(treePath + "/Makefile"))
        #expect(try String(contentsOfFile: treePath + "/kernel/exit.c", encoding: .utf8).contains("init exited with code"))
        let after = try FileManager.default.contentsOfDirectory(atPath: cache + "/trees").filter { !$0.hasSuffix(".lock") }
        #expect(after == [json["key"] as? String ?? "?"])
    }
}
