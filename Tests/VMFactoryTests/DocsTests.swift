import Foundation
import Testing
@testable import VMFactoryCore

/// The documents as a reader follows them: every relative link leads to a file and, with a
/// `#fragment`, to a heading there; every command the README lists is one vmfactory has.
@Suite("Documents", .tags(.unit), .scoped)
struct DocsTests {
    static let root = TestSupport.repositoryRoot

    /// README.md, every document in docs/ and the READMEs beside the library's folders.
    static var documents: [String] {
        let docs = ((try? FileManager.default.contentsOfDirectory(atPath: root + "/docs")) ?? [])
            .filter { $0.hasSuffix(".md") }.sorted().map { "docs/" + $0 }
        return ["README.md", "kernel-configs/README.md"] + docs
    }

    /// `[text](target)` links outside code, with the line they are on.
    static func links(in text: String) -> [(line: Int, target: String)] {
        var result: [(Int, String)] = []
        var fenced = false
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if line.hasPrefix("```") { fenced.toggle() }
            if fenced { continue }
            // Inline code spans hold no links.
            let prose = line.split(separator: "`", omittingEmptySubsequences: false).enumerated().filter { $0.offset % 2 == 0 }.map(\.element).joined()
            var rest = Substring(prose)
            while let open = rest.range(of: "](") {
                let after = rest[open.upperBound...]
                guard let close = after.firstIndex(of: ")") else { break }
                result.append((index + 1, String(after[..<close])))
                rest = after[after.index(after: close)...]
            }
        }
        return result
    }

    /// The anchors GitHub gives a document's headings: lower case, spaces to hyphens,
    /// punctuation but hyphens and underscores dropped, repeats numbered.
    static func anchors(in text: String) -> Set<String> {
        var seen: [String: Int] = [:]
        var result = Set<String>()
        var fenced = false
        for line in text.split(separator: "\n") {
            if line.hasPrefix("```") { fenced.toggle() }
            guard !fenced, line.hasPrefix("#") else { continue }
            let title = line.drop { $0 == "#" }.trimmingCharacters(in: .whitespaces)
            var slug = ""
            for character in title.lowercased() {
                if character == " " { slug.append("-") } else if character.isLetter || character.isNumber || character == "-" || character == "_" { slug.append(character) }
            }
            let count = seen[slug, default: 0]
            seen[slug] = count + 1
            result.insert(count == 0 ? slug : "\(slug)-\(count)")
        }
        return result
    }

    @Test("the README is short: at most 200 lines")
    func readmeLength() throws {
        let lines = try FileStore.readText(Self.root + "/README.md").filter { $0 == "\n" }.count
        #expect(lines <= 200, "README.md has \(lines) lines")
    }

    @Test("every relative link in the README and docs/ resolves, down to its heading")
    func linksResolve() throws {
        var checked = 0
        for document in Self.documents {
            let text = try FileStore.readText(Self.root + "/" + document)
            let folder = URL(fileURLWithPath: Self.root + "/" + document).deletingLastPathComponent()
            for (line, target) in Self.links(in: text) where !target.contains("://") && !target.hasPrefix("mailto:") {
                checked += 1
                let parts = target.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
                let file = parts[0].isEmpty ? URL(fileURLWithPath: Self.root + "/" + document) : folder.appendingPathComponent(parts[0]).standardized
                #expect(FileManager.default.fileExists(atPath: file.path), "\(document):\(line): \(target): no file \(file.path)")
                guard parts.count == 2, file.pathExtension == "md", let linked = try? FileStore.readText(file.path) else { continue }
                #expect(Self.anchors(in: linked).contains(parts[1]), "\(document):\(line): \(target): no heading with that anchor in \(file.lastPathComponent)")
            }
        }
        #expect(checked > 50, "only \(checked) relative links found: is the link reader broken?")
    }

    @Test("the link reader and the anchors follow GitHub's rules")
    func linkReader() {
        let links = Self.links(in: "see [a](docs/a.md#x) and `[no](code.md)`\n```\n[no](fenced.md)\n```\n[b](../b.md)")
        #expect(links.map(\.target) == ["docs/a.md#x", "../b.md"])
        #expect(Self.anchors(in: "# Two commands\n## `vmfactory bench`\n## Pull, verified!\n## Pull, verified") == ["two-commands", "vmfactory-bench", "pull-verified", "pull-verified-1"])
    }

    @Test("every command the README lists is one of vmfactory's, and every one of vmfactory's is listed")
    func commandsExist() async throws {
        let readme = try FileStore.readText(Self.root + "/README.md")
        let listed = Set(readme.split(separator: "\n").compactMap { line -> String? in
            guard line.hasPrefix("| `vmfactory ") else { return nil }
            return line.dropFirst("| `vmfactory ".count).split(whereSeparator: { $0 == " " || $0 == "`" }).first.map(String.init)
        })
        let help = await TestSupport.runCommand(["--help"])
        #expect(help.status == 0)
        var inSubcommands = false
        var offered = Set<String>()
        for line in help.stdout.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("SUBCOMMANDS:") { inSubcommands = true; continue }
            if inSubcommands, line.isEmpty { break }
            // "  name   what it does"; a wrapped description continues further in.
            if inSubcommands, line.hasPrefix("  "), !line.hasPrefix("   "), let name = line.split(separator: " ").first { offered.insert(String(name)) }
        }
        #expect(offered.count >= 15, "\(help.stdout)")
        #expect(listed.subtracting(offered).isEmpty, "listed in README.md, unknown to vmfactory --help: \(listed.subtracting(offered).sorted())")
        #expect(offered.subtracting(listed).isEmpty, "in vmfactory --help, missing from README.md: \(offered.subtracting(listed).sorted())")
    }
}
