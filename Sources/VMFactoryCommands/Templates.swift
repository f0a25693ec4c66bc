import ArgumentParser
import Foundation
import VMFactoryCore
import VMFactoryExec
import VMFactoryRun

struct Templates: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the saved VMs that runs start from (one a machine: kernel, initrd, QEMU, memory, CPUs, devices), or remove some.",
        discussion: "The first run of a machine makes its template; `vmfactory run --no-snapshot` boots cold. `vmfactory clean --templates` removes them all.",
        subcommands: [List.self, Remove.self],
        defaultSubcommand: List.self
    )

    /// One template, as `templates` prints it.
    struct Listing: Codable, Sendable {
        var key: String
        var target: String
        var memoryMiB: Int
        var cpus: Int
        var accelerator: String
        var bytes: Int64
        /// ISO 8601, as `ps --format json` writes its times.
        var created: String
        var saveSeconds: Double
        var folder: String
        /// What the key covers, a fact a line.
        var description: String

        init(_ found: (template: RunTemplates.Template, bytes: Int64)) {
            let record = found.template.record
            key = record.key
            target = record.target
            memoryMiB = record.memoryMiB
            cpus = record.cpus
            accelerator = record.accelerator
            bytes = found.bytes
            created = ISO8601DateFormatter().string(from: record.created)
            saveSeconds = record.saveSeconds
            folder = found.template.folder
            description = record.description
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List templates, newest first, with their size.")

        @OptionGroup var global: GlobalOptions

        func run() async throws {
            try await global.perform { context, _ in
                let listings = RunTemplates(cacheDirectory: global.cacheDirectory(context)).list().map(Listing.init)
                return Output(text: Templates.table(listings), value: listings)
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove templates by key (6+ hex digits of one).")

        @OptionGroup var global: GlobalOptions

        @Argument(help: "Keys, as `vmfactory templates` lists them.")
        var keys: [String]

        func validate() throws {
            if keys.isEmpty { throw ValidationError("say which templates to remove: a key from `vmfactory templates`, or use vmfactory clean --templates") }
            if let short = keys.first(where: { $0.count < 6 }) { throw ValidationError("'\(short)' is too short to name one template: give at least 6 hex digits of its key") }
        }

        func run() async throws {
            let keys = self.keys
            try await global.perform { context, _ in
                let templates = RunTemplates(cacheDirectory: global.cacheDirectory(context))
                let all = templates.list().map(Listing.init)
                var removed: [Listing] = []
                for key in keys {
                    let found = all.filter { $0.key.hasPrefix(key.lowercased()) }
                    guard !found.isEmpty else {
                        throw VMFactoryError(.notFound, "no template's key starts with '\(key)'", hint: "`vmfactory templates` lists them")
                    }
                    for listing in found where !removed.contains(where: { $0.key == listing.key }) {
                        guard templates.remove(key: listing.key) else {
                            throw VMFactoryError(.io, "a run is making the template \(listing.key.prefix(12)) now", hint: "try again once it has started")
                        }
                        removed.append(listing)
                    }
                }
                return Output(text: removed.map { "removed \($0.key.prefix(12)) (\(ByteCount.format($0.bytes)))" }.joined(separator: "\n"), value: removed)
            }
        }
    }

    static func table(_ listings: [Listing]) -> String {
        guard !listings.isEmpty else { return "no templates (the first run of a machine makes its own)" }
        let rows = [["KEY", "TARGET", "MEMORY", "CPUS", "ACCEL", "SIZE", "CREATED"]] + listings.map { listing in
            [
                String(listing.key.prefix(12)), listing.target, "\(listing.memoryMiB) MiB", String(listing.cpus), listing.accelerator,
                ByteCount.format(listing.bytes), listing.created,
            ]
        }
        return Images.columns(rows)
    }
}
