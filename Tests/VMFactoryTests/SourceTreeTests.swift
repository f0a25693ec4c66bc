import Foundation
import Testing
@testable import VMFactory

@Suite("Source trees and patch series")
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
        SourceTreeStore(cacheDirectory: cache, console: .recording())
    }

    func treeEntries(_ cache: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: cache + "/trees")) ?? []).filter { !$0.hasSuffix(".lock") }.sorted()
    }

    @Test("a series applies in order into a read-only, content-addressed tree", .needsTool("patch"))
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

        try FileStore.removeTree(dir)
        #expect(!FileStore.exists(dir))
    }

    @Test("a failing patch is named with the file and hunk that failed, and leaves no tree", .needsTool("patch"))
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
        try FileStore.removeTree(dir)
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
        try FileStore.removeTree(dir)
    }

    @Test("a half-made tree left by a killed run is removed, never used")
    func abandonedPartialTree() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let tarball = try Self.fakeKernel(at: dir + "/linux-fake.tar.gz")
        let key = SourceTreeStore.key(source: tarball.sha256, series: nil)
        let dead = try await TestSupport.run("sh", ["-c", "echo $$"]).output.trimmingCharacters(in: .whitespacesAndNewlines)
        let partial = dir + "/cache/trees/.partial-\(key.hex)-\(dead)-1"
        try TestSupport.write("half\n", to: partial + "/linux/Makefile")

        let tree = try await store(dir + "/cache").prepare(tarball: tarball, series: nil)
        #expect(try String(contentsOfFile: tree.path + "/Makefile", encoding: .utf8) == "all:\n")
        #expect(!FileStore.exists(partial))
        #expect(treeEntries(dir + "/cache") == [key.hex])
        try FileStore.removeTree(dir)
    }

    @Test("vmfactory prepare killed during extraction leaves no finished tree; the next run succeeds", .needsPinnedKernel, .needsTool("patch"))
    func killedDuringExtraction() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let cache = dir + "/cache"
        // Let the verified tarball come from the cache quickly: copy it in through a first fetch.
        var sourceArguments: [String] = []
        for source in TestSupport.kernelSourceDirs { sourceArguments += ["--source-dir", source] }
        let fetched = try await TestSupport.runCLI(["fetch", "--recipe", "minimal", "--cache-dir", cache, "--offline"] + sourceArguments)
        #expect(fetched.status == 0, "\(fetched.stderr)")

        let process = Process()
        process.executableURL = URL(fileURLWithPath: TestSupport.executable)
        process.arguments = ["prepare", "--recipe", "minimal", "--cache-dir", cache, "--offline"]
        process.environment = Command.baseEnvironment().merging(["VMFACTORY_HOME": TestSupport.repositoryRoot]) { $1 }
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        // Kill hard as soon as extraction has visibly started. The wait is a plain blocking
        // poll on this thread, not a Task.sleep: on a busy two-core machine the test pool's
        // threads may all be taken by other tests, and a sleeping task could wake up only
        // after the whole extraction had finished.
        let started = Date()
        var extracting = false
        while process.isRunning, Date().timeIntervalSince(started) < 300 {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: cache + "/trees")) ?? []
            if let partial = names.first(where: { $0.hasPrefix(".partial-") }),
               ((try? FileManager.default.contentsOfDirectory(atPath: cache + "/trees/" + partial + "/linux"))?.count ?? 0) >= 3 {
                extracting = true
                break
            }
            usleep(20_000)
        }
        #expect(extracting, "extraction was never seen under \(cache)/trees")
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(process.terminationReason == .uncaughtSignal)

        let entries = try FileManager.default.contentsOfDirectory(atPath: cache + "/trees").filter { !$0.hasSuffix(".lock") }
        #expect(entries.count == 1)
        #expect(entries.allSatisfy { $0.hasPrefix(".partial-") }, "a tree looks finished after a kill: \(entries)")

        let rerun = try await TestSupport.runCLI(["prepare", "--recipe", "minimal", "--cache-dir", cache, "--offline", "--format", "json"])
        #expect(rerun.status == 0, "\(rerun.stderr)")
        #expect(rerun.stderr.contains("removing an unfinished source tree left by an interrupted run"))
        let json = try #require(try JSONSerialization.jsonObject(with: Data(rerun.stdout.utf8)) as? [String: Any])
        let treePath = try #require(json["tree"] as? String)
        #expect(FileStore.isRegularFile(treePath + "/Makefile"))
        #expect(try String(contentsOfFile: treePath + "/kernel/exit.c", encoding: .utf8).contains("init exited with code"))
        let after = try FileManager.default.contentsOfDirectory(atPath: cache + "/trees").filter { !$0.hasSuffix(".lock") }
        #expect(after == [json["key"] as? String ?? "?"])
        try FileStore.removeTree(dir)
    }
}
