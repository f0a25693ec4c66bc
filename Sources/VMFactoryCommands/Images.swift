import ArgumentParser
import Foundation
import VMFactoryCore
import VMFactoryExec
import VMFactoryImage

struct Images: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the images converted into root disks (vmfactory rootfs), or remove some.",
        subcommands: [List.self, Remove.self],
        defaultSubcommand: List.self
    )

    /// One converted image, as `images` prints it.
    struct Listing: Codable, Sendable {
        var references: [String]
        var manifestDigest: String
        var platform: String
        var disk: String
        var format: String
        var diskSize: Int64
        var virtualSize: Int64
        var lastUsed: Date?
        var key: String

        init(_ entry: RootfsCache.Entry) {
            references = entry.record.references
            manifestDigest = entry.record.manifestDigest
            platform = entry.record.platform
            disk = entry.diskPath
            format = entry.record.disk.format
            diskSize = entry.record.disk.size
            virtualSize = entry.record.disk.virtualSize
            lastUsed = entry.lastUsed
            key = entry.key
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List converted images, most recently used first.")

        @OptionGroup var global: GlobalOptions

        func run() async throws {
            try await global.perform { context, _ in
                let entries = RootfsCache(cacheDirectory: global.cacheDirectory(context)).list().map(Listing.init)
                return Output(text: Images.table(entries), value: entries)
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rm", abstract: "Remove converted images by reference, manifest digest (or 8+ hex digits of one) or key."
        )

        @OptionGroup var global: GlobalOptions

        @Argument(help: "References or digests, as `vmfactory images` lists them.")
        var selectors: [String]

        func validate() throws {
            if selectors.isEmpty { throw ValidationError("say which images to remove: a reference or a digest from `vmfactory images`") }
        }

        func run() async throws {
            let selectors = self.selectors
            try await global.perform { context, console in
                let cache = RootfsCache(cacheDirectory: global.cacheDirectory(context))
                var chosen: [RootfsCache.Entry] = []
                for selector in selectors {
                    let found = cache.entries(matching: selector)
                    guard !found.isEmpty else {
                        throw VMFactoryError(.notFound, "no converted image matches '\(selector)'", hint: "`vmfactory images` lists them with their references and digests")
                    }
                    chosen += found.filter { entry in !chosen.contains { $0.key == entry.key } }
                }
                let removed = try await cache.remove(chosen, console: console).map(Listing.init)
                let text = removed.map { "removed \($0.references.last ?? $0.manifestDigest) (\($0.platform), \($0.disk))" }.joined(separator: "\n")
                return Output(text: text, value: removed, failed: removed.count < chosen.count)
            }
        }
    }

    static func table(_ entries: [Listing]) -> String {
        guard !entries.isEmpty else { return "no converted images (make one with vmfactory rootfs IMAGE)" }
        let formatter = ISO8601DateFormatter()
        let rows = [["REFERENCE", "DIGEST", "PLATFORM", "FORMAT", "DISK", "LAST USED"]] + entries.map { entry in
            [
                entry.references.last ?? "", String(entry.manifestDigest.prefix(19)), entry.platform, entry.format,
                ByteCount.format(entry.diskSize), entry.lastUsed.map { formatter.string(from: $0) } ?? "-",
            ]
        }
        return columns(rows)
    }

    /// `rows` as aligned columns, two spaces apart (the first row the heading).
    static func columns(_ rows: [[String]]) -> String {
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n")
    }
}
