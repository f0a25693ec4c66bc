import Foundation
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryCore

@Suite("Extracting archives safely", .tags(.unit), .scoped)
struct ArchiveTests {
    typealias Entry = ArchiveWriter.Entry

    /// A jail with `dest/` to extract into and `outside/secret.txt` that must stay untouched.
    struct Jail {
        let root: String
        var destination: String { root + "/dest" }
        var outside: String { root + "/outside" }

        init() throws {
            root = try TestSupport.temporaryDirectory("jail")
            try TestSupport.write("keep me\n", to: outside + "/secret.txt")
        }

        /// Where the test keeps its archives.
        var archives: String { root + "/archives" }

        /// Everything in the jail outside `dest/` and the test's own archives.
        func outsideState() -> [String] {
            TestSupport.files(under: root).filter { !$0.hasPrefix("dest") && !$0.hasPrefix("archives") }
        }

        func assertOutsideUntouched() throws {
            #expect(outsideState() == ["outside", "outside/secret.txt"])
            #expect(try String(contentsOfFile: outside + "/secret.txt", encoding: .utf8) == "keep me\n")
        }
    }

    struct Hostile: CustomTestStringConvertible, Sendable {
        var name: String
        var entries: @Sendable (Jail) -> [Entry]
        var reason: String
        var testDescription: String { name }
    }

    static let hostileArchives: [Hostile] = [
        Hostile(name: "../ entry", entries: { _ in
            [Entry(path: "top/ok.txt", kind: .file(Data("ok".utf8))), Entry(path: "top/../../outside/evil.txt", kind: .file(Data("evil".utf8)))]
        }, reason: "path leaves the destination (..)"),
        Hostile(name: "absolute path", entries: { jail in
            [Entry(path: jail.outside + "/evil.txt", kind: .file(Data("evil".utf8)))]
        }, reason: "absolute path"),
        Hostile(name: "symlink out of the tree, then a file through it", entries: { jail in
            [Entry(path: "top/link", kind: .symlink("../../outside"), mode: 0o777), Entry(path: "top/link/evil.txt", kind: .file(Data("evil".utf8)))]
        }, reason: "symlink to '../../outside' points outside the destination"),
        Hostile(name: "absolute symlink, then a file through it", entries: { jail in
            [Entry(path: "top/link", kind: .symlink(jail.outside), mode: 0o777), Entry(path: "top/link/evil.txt", kind: .file(Data("evil".utf8)))]
        }, reason: "points outside the destination"),
        Hostile(name: "symlink inside the tree, then a file written through it", entries: { _ in
            // The link itself stays inside, so only libarchive's SECURE_SYMLINKS stops the write.
            [Entry(path: "top/real", kind: .directory, mode: 0o755), Entry(path: "top/inner", kind: .symlink("real"), mode: 0o777), Entry(path: "top/inner/evil.txt", kind: .file(Data("evil".utf8)))]
        }, reason: "Cannot extract through symlink"),
        Hostile(name: "hard link to an absolute outside path", entries: { jail in
            [Entry(path: "top/hard", kind: .hardlink(jail.outside + "/secret.txt"))]
        }, reason: "outside the destination"),
        Hostile(name: "hard link climbing out with ..", entries: { _ in
            [Entry(path: "top/hard", kind: .hardlink("top/../../outside/secret.txt"))]
        }, reason: "outside the destination"),
        Hostile(name: "device node", entries: { _ in
            [Entry(path: "top/sda", kind: .characterDevice(major: 8, minor: 0), mode: 0o600)]
        }, reason: "device nodes"),
    ]

    @Test("hostile tarballs are refused and nothing lands outside the tree", arguments: hostileArchives)
    func hostile(_ hostile: Hostile) throws {
        let jail = try Jail()
        let tarball = jail.archives + "/hostile.tar"
        try ArchiveWriter.write(hostile.entries(jail), to: tarball, format: .paxTar)
        let before = jail.outsideState()

        let error = try #require(throws: VMFactoryError.self) {
            try ArchiveExtractor.extract(archive: tarball, into: jail.destination, stripTopDirectory: false)
        }
        #expect(error.code == .hostileArchive || error.code == .archiveFailed)
        #expect(error.message.contains(hostile.reason), "\(error.message)")
        #expect(jail.outsideState().sorted() == before.sorted())
        #expect(try String(contentsOfFile: jail.outside + "/secret.txt", encoding: .utf8) == "keep me\n")
        #expect(!TestSupport.files(under: jail.destination).contains { $0.hasSuffix("evil.txt") })
    }

    @Test("a plain tree extracts with modes, symlinks and hard links, its top folder stripped")
    func plainTree() throws {
        let jail = try Jail()
        let tarball = jail.archives + "/tree.tar.gz"
        try ArchiveWriter.write([
            Entry(path: "linux-x/", kind: .directory, mode: 0o755),
            Entry(path: "linux-x/scripts/", kind: .directory, mode: 0o755),
            Entry(path: "linux-x/scripts/run.sh", kind: .file(Data("#!/bin/sh\n".utf8)), mode: 0o755, mtime: 1_700_000_000),
            Entry(path: "linux-x/include/", kind: .directory, mode: 0o755),
            Entry(path: "linux-x/include/a.h", kind: .file(Data("int a;\n".utf8))),
            Entry(path: "linux-x/include/b.h", kind: .symlink("a.h"), mode: 0o777),
            Entry(path: "linux-x/scripts/a-copy.h", kind: .symlink("../include/a.h"), mode: 0o777),
            Entry(path: "linux-x/include/c.h", kind: .hardlink("linux-x/include/a.h")),
        ], to: tarball, format: .paxTar, compression: .gzip)

        let summary = try ArchiveExtractor.extract(archive: tarball, into: jail.destination, stripTopDirectory: true, expected: try SHA256Digest.ofFile(at: tarball))
        #expect(summary.digest == (try SHA256Digest.ofFile(at: tarball)))
        #expect(TestSupport.files(under: jail.destination) == ["include", "include/a.h", "include/b.h", "include/c.h", "scripts", "scripts/a-copy.h", "scripts/run.sh"])
        let attributes = try FileManager.default.attributesOfItem(atPath: jail.destination + "/scripts/run.sh")
        #expect((attributes[.posixPermissions] as? Int) == 0o755)
        #expect((attributes[.modificationDate] as? Date) == Date(timeIntervalSince1970: 1_700_000_000))
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: jail.destination + "/include/b.h") == "a.h")
        #expect(try String(contentsOfFile: jail.destination + "/scripts/a-copy.h", encoding: .utf8) == "int a;\n")
        #expect(try String(contentsOfFile: jail.destination + "/include/c.h", encoding: .utf8) == "int a;\n")
        try jail.assertOutsideUntouched()
    }

    @Test("a tarball that changed since it was verified is caught by the digest taken while extracting")
    func digestCheckedDuringExtraction() throws {
        let jail = try Jail()
        let tarball = jail.archives + "/tree.tar"
        try ArchiveWriter.write([Entry(path: "t/a", kind: .file(Data("a".utf8)))], to: tarball, format: .paxTar)
        let error = try #require(throws: VMFactoryError.self) {
            try ArchiveExtractor.extract(archive: tarball, into: jail.destination, stripTopDirectory: true, expected: .of("something else"))
        }
        #expect(error.code == .digestMismatch)
    }
}
