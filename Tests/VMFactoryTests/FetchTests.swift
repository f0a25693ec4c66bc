import Foundation
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryCore
@testable import VMFactoryKernel

@Suite("Fetching pinned sources", .tags(.unit), .scoped)
struct FetchTests {
    /// Bytes that stand in for a source tarball, and their pin.
    static let payload = Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
    static let payloadDigest = SHA256Digest.of(payload)

    func fetcher(cache: String, searchPath: [String] = [], useNetwork: Bool = true) -> SourceFetcher {
        SourceFetcher(cache: SourceCache(cacheDirectory: cache), searchPath: searchPath, useApt: false, useNetwork: useNetwork, runner: RefusingRunner(), console: .recording())
    }

    func cachedFiles(_ cache: String) -> [String] {
        TestSupport.files(under: cache + "/sources").filter { !$0.hasSuffix("/") && FileStore.isRegularFile(cache + "/sources/" + $0) }
    }

    @Test("bytes that do not match the pin are refused, and nothing is cached")
    func mismatchIsRefused() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let wrong = dir + "/linux.tar.xz"
        try TestSupport.write(Data("not the kernel".utf8), to: wrong)
        let pin = SourcePin(sha256: Self.payloadDigest, fileName: "linux.tar.xz", paths: [wrong])
        let error = try await #require(throws: VMFactoryError.self) {
            try await fetcher(cache: dir + "/cache").fetch(pin)
        }
        #expect(error.code == .fetchFailed)
        let mismatch = try #require(error.details.first { $0.contains("sha256 mismatch") })
        #expect(mismatch.contains("expected \(Self.payloadDigest)"))
        #expect(mismatch.contains("got \(SHA256Digest.of(Data("not the kernel".utf8)))"))
        #expect(mismatch.contains("path \(wrong)"))
        #expect(cachedFiles(dir + "/cache").isEmpty, "cache holds \(cachedFiles(dir + "/cache"))")
    }

    @Test("a file anywhere in the source search path is found by its sha256 and cached")
    func searchPath() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write(Data("decoy".utf8), to: dir + "/sources/a-decoy")
        try TestSupport.write(Self.payload, to: dir + "/sources/renamed-by-someone.bin")
        let pin = SourcePin(sha256: Self.payloadDigest, fileName: "linux-x.tar.xz")
        let fetcher = fetcher(cache: dir + "/cache", searchPath: [dir + "/empty", dir + "/sources"])

        let first = try await fetcher.fetch(pin)
        #expect(!first.wasCached)
        #expect(first.origin == SourceOrigin(kind: .path, location: dir + "/sources/renamed-by-someone.bin"))
        #expect(try Data(contentsOf: URL(fileURLWithPath: first.path)) == Self.payload)
        #expect(first.path == dir + "/cache/sources/sha256/\(Self.payloadDigest.hex)")

        // The second time the cache answers, and still knows where the bytes came from.
        try FileManager.default.removeItem(atPath: dir + "/sources/renamed-by-someone.bin")
        let second = try await fetcher.fetch(pin)
        #expect(second.wasCached)
        #expect(second.origin == first.origin)
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: dir + "/cache/sources/tmp")) ?? []
        #expect(leftovers.isEmpty)
    }

    @Test("a SHA256SUMS file in a source folder points at the file under another name")
    func sha256sums() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write(Self.payload, to: dir + "/src/weird name.tar")
        try TestSupport.write("\(Self.payloadDigest.hex)  weird name.tar\n", to: dir + "/src/SHA256SUMS")
        let fetched = try await fetcher(cache: dir + "/cache", searchPath: [dir + "/src"]).fetch(SourcePin(sha256: Self.payloadDigest))
        #expect(fetched.origin?.location == dir + "/src/weird name.tar")
    }

    @Test("download over http from a server on 127.0.0.1, hashed while it streams")
    func httpDownload() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let server = try LoopbackHTTPServer(routes: ["/linux.tar.xz": Self.payload, "/wrong.tar.xz": Data("tampered".utf8)])
        defer { server.stop() }
        let pin = SourcePin(sha256: Self.payloadDigest, urls: [server.url("/missing.tar.xz"), server.url("/wrong.tar.xz"), server.url("/linux.tar.xz")])
        let console = Console.recording()
        let fetcher = SourceFetcher(cache: SourceCache(cacheDirectory: dir + "/cache"), searchPath: [], useApt: false, useNetwork: true, runner: RefusingRunner(), console: console)

        let fetched = try await fetcher.fetch(pin)
        #expect(fetched.origin == SourceOrigin(kind: .url, location: server.url("/linux.tar.xz")))
        #expect(try Data(contentsOf: URL(fileURLWithPath: fetched.path)) == Self.payload)
        #expect(server.requests == ["/missing.tar.xz", "/wrong.tar.xz", "/linux.tar.xz"])
        #expect(console.recordedLines.contains { $0.hasPrefix("downloading") && $0.contains("KiB") })
        #expect(cachedFiles(dir + "/cache").sorted() == ["sha256/\(Self.payloadDigest.hex)", "sha256/\(Self.payloadDigest.hex).origin.json"])
    }

    @Test("a tampered download is refused with both digests and the URL")
    func httpMismatch() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let server = try LoopbackHTTPServer(routes: ["/linux.tar.xz": Data("tampered".utf8)])
        defer { server.stop() }
        let pin = SourcePin(sha256: Self.payloadDigest, urls: [server.url("/linux.tar.xz")])
        let error = try await #require(throws: VMFactoryError.self) { try await fetcher(cache: dir + "/cache").fetch(pin) }
        let line = try #require(error.details.first { $0.contains(server.url("/linux.tar.xz")) })
        #expect(line.contains("expected \(Self.payloadDigest)"))
        #expect(line.contains("got \(SHA256Digest.of(Data("tampered".utf8)))"))
        #expect(cachedFiles(dir + "/cache").isEmpty)
    }

    @Test("offline, URLs are not tried and the error says what to do")
    func offline() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let pin = SourcePin(sha256: Self.payloadDigest, urls: ["https://example.invalid/linux.tar.xz"])
        let error = try await #require(throws: VMFactoryError.self) {
            try await fetcher(cache: dir + "/cache", useNetwork: false).fetch(pin)
        }
        #expect(error.details.contains("https://example.invalid/linux.tar.xz: skipped (offline)"))
        #expect(error.hint?.contains("--source-dir") == true)
    }

    @Test("a member file is read out of a .deb that dpkg-deb built", .tags(.integration), .needsTool("dpkg-deb"))
    func debMember() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let root = dir + "/pkg"
        try TestSupport.write("""
            Package: vmf-test-source
            Version: 1.0-1
            Architecture: all
            Maintainer: vmfactory tests <tests@localhost>
            Description: test package

            """, to: root + "/DEBIAN/control")
        try TestSupport.write(Self.payload, to: root + "/usr/src/linux-test.tar.xz")
        try TestSupport.write("other\n", to: root + "/usr/src/README")
        let built = try await TestSupport.run("dpkg-deb", ["--build", "-Zxz", "--root-owner-group", root, dir + "/test.deb"])
        #expect(built.succeeded, "\(built.output)")

        var extracted = Data()
        try DebPackage.extractMember("usr/src/linux-test.tar.xz", from: dir + "/test.deb") { extracted.append(contentsOf: $0) }
        #expect(extracted == Self.payload)

        // And into the cache through the same verified path the apt route takes.
        let cache = SourceCache(cacheDirectory: dir + "/cache")
        let stored = try await cache.insert(expected: Self.payloadDigest, origin: SourceOrigin(kind: .apt, location: "vmf-test-source=1.0-1:usr/src/linux-test.tar.xz")) { sink in
            try DebPackage.extractMember("/usr/src/linux-test.tar.xz", from: dir + "/test.deb") { try sink.write($0) }
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: stored)) == Self.payload)

        let missing = try #require(throws: VMFactoryError.self) {
            try DebPackage.extractMember("usr/src/linux-source-6.1.tar.xz", from: dir + "/test.deb") { _ in }
        }
        #expect(missing.message == "test.deb has no file usr/src/linux-source-6.1.tar.xz")
        #expect(missing.hint?.contains("usr/src/linux-test.tar.xz") == true)
    }
}

@Suite("Fetching the pinned source", .tags(.integration), .scoped, .needsPinnedKernel)
struct FetchIntegrationTests {
    @Test("vmfactory fetch finds the pinned tarball through --source-dir")
    func fetchCommand() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let arguments = ["fetch", "--recipe", "minimal", "--cache-dir", dir + "/cache", "--offline", "--format", "json"] + (try TestSupport.sourceDirArguments())
        let result = await TestSupport.runCommand(arguments)
        #expect(result.status == 0, "\(result.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect(json["sha256"] as? String == TestSupport.pinnedSHA256.hex)
        #expect(json["cached"] as? Bool == false)
        #expect((json["origin"] as? [String: Any])?["kind"] as? String == "path")
        #expect(result.stderr.contains("verified from"))
        #expect(try await TestSupport.sha256sum(dir + "/cache/sources/sha256/\(TestSupport.pinnedSHA256.hex)") == TestSupport.pinnedSHA256.hex)
    }
}
