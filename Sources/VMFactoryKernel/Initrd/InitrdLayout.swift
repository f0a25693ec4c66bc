import Foundation
import VMFactoryArchive
import VMFactoryCore

/// What an initrd holds, as archive entries: the directory skeleton, the two device nodes
/// the kernel and init need before devtmpfs is mounted, `/init`, init's settings and the
/// recipe's files. Entries are sorted by path, owned by root and stamped with one time, so
/// equal inputs give equal bytes.
public enum InitrdLayout {
    public static let configPath = "/etc/vmfactory/init.conf"

    static let directories: [(String, UInt32)] = [
        ("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("etc/vmfactory", 0o755), ("mnt", 0o755),
        ("proc", 0o555), ("root", 0o700), ("run", 0o755), ("sbin", 0o755), ("sys", 0o555),
        ("tmp", 0o1777), ("usr", 0o755), ("usr/bin", 0o755), ("var", 0o755),
    ]

    /// `init.conf`: the recipe's settings for init, one `key=value` a line, every value escaped
    /// as in the run's settings: the init reads both with one reader (`vmf_conf_next` in conf.c).
    public static func initConfig(_ spec: InitrdSpec) -> String {
        var lines = ["# Written by vmfactory from the recipe's initrd section.", "hostname=\(SettingsText.escaped(spec.hostname))"]
        if let program = spec.entrypoint.first {
            lines.append("entrypoint=\(SettingsText.escaped(program))")
            lines += spec.entrypoint.dropFirst().map { "arg=\(SettingsText.escaped($0))" }
        }
        lines += spec.environment.map { "env=\(SettingsText.escaped("\($0.0)=\($0.1)"))" }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Every entry of the initrd, sorted, with `init` as `/init`.
    public static func entries(init initBinary: Data, spec: InitrdSpec, mtime: Int64) throws -> [ArchiveWriter.Entry] {
        var entries: [String: ArchiveWriter.Entry] = [:]
        func add(_ path: String, _ kind: ArchiveWriter.Kind, _ mode: UInt32) {
            entries[path] = ArchiveWriter.Entry(path: path, kind: kind, mode: mode, uid: 0, gid: 0, mtime: mtime)
        }
        for (path, mode) in directories { add(path, .directory, mode) }
        add("dev/console", .characterDevice(major: 5, minor: 1), 0o600)
        add("dev/null", .characterDevice(major: 1, minor: 3), 0o666)
        add("init", .file(initBinary), 0o755)
        add(String(configPath.dropFirst()), .file(Data(initConfig(spec).utf8)), 0o644)
        for file in spec.files {
            let path = String(file.destination.dropFirst())
            // Parent folders that the skeleton does not have.
            var parent = URL(fileURLWithPath: "/" + path).deletingLastPathComponent().path
            while parent != "/" {
                let relative = String(parent.dropFirst())
                if let existing = entries[relative] {
                    guard existing.kind == .directory else {
                        throw VMFactoryError(.invalidRecipe, "initrd file \(file.destination) would go below \(parent), which is a file")
                    }
                } else {
                    add(relative, .directory, 0o755)
                }
                parent = URL(fileURLWithPath: parent).deletingLastPathComponent().path
            }
            if let existing = entries[path], existing.kind == .directory {
                throw VMFactoryError(.invalidRecipe, "initrd file \(file.destination) would replace a folder of the initrd")
            }
            let data: Data
            do {
                data = try Data(contentsOf: URL(fileURLWithPath: file.source))
            } catch {
                throw VMFactoryError(.notFound, "cannot read initrd file \(file.source)", cause: error as NSError)
            }
            add(path, .file(data), file.mode)
        }
        // Component-wise order: a folder always comes before what it holds.
        return entries.values.sorted { $0.path.split(separator: "/").lexicographicallyPrecedes($1.path.split(separator: "/")) }
    }
}
