import Foundation
import VMFactoryCore
import VMFactoryKernel

/// The `dir:` form, for runtimes that take paths: `DIR/<target>/` with the artifacts, the
/// build's manifest.json and a SHA256SUMS that `sha256sum -c` accepts. Each target's folder
/// is written under a temporary name and swapped in whole.
public enum FolderWriter {
    public struct File: Sendable, Codable, Equatable {
        public var name: String
        public var sha256: SHA256Digest
        public var size: Int64
    }

    /// `sha256sum`'s own format: hex, two blanks, the name; sorted by name.
    public static func checksums(_ files: [File]) -> String {
        files.sorted { $0.name < $1.name }.map { "\($0.sha256.hex)  \($0.name)\n" }.joined()
    }

    /// The name a published file has in a folder (the layer's vmfactory-manifest.json is the
    /// build's manifest.json again).
    public static func folderName(_ name: String) -> String {
        name == BuiltTarget.manifestName ? BuildManifest.fileName : name
    }

    /// Refuses to replace a target's folder that holds other files, unless `force`.
    public static func checkReplaceable(_ folder: String, files: [File], force: Bool) throws {
        guard FileStore.exists(folder), !force else { return }
        let existing = (try? FileStore.readText(folder + "/SHA256SUMS")) ?? ""
        guard existing != checksums(files) else { return }
        throw VMFactoryError(
            .invalidArgument, "\(FileStore.displayPath(folder)) exists and holds other files",
            hint: "give --force to replace it, or another folder; nothing was changed"
        )
    }

    /// Moves a finished folder into place, replacing what was there.
    public static func swapIn(_ staged: String, as folder: String) throws {
        if FileStore.exists(folder) {
            let old = FileStore.temporaryName(for: folder)
            try FileStore.rename(folder, to: old)
            do {
                try FileStore.rename(staged, to: folder)
            } catch {
                try? FileStore.rename(old, to: folder)
                throw error
            }
            try? FileStore.removeTree(old)
        } else {
            try FileStore.rename(staged, to: folder)
        }
    }

    /// Writes the targets' files into `DIR/<target>/`; every copy is hashed again.
    public static func write(_ targets: [BuiltTarget], to directory: String, force: Bool, cancellation: BlockingWork.Cancellation? = nil) throws -> [Target: [File]] {
        var planned: [Target: [File]] = [:]
        for built in targets {
            planned[built.target] = built.files.map { File(name: folderName($0.name), sha256: $0.sha256, size: $0.size) }
            try checkReplaceable(directory + "/" + built.target.rawValue, files: planned[built.target]!, force: force)
        }
        try FileStore.createDirectory(directory)
        var staged: [(Target, String)] = []
        defer { for (_, path) in staged { try? FileStore.removeTree(path) } }
        for built in targets {
            let folder = directory + "/" + built.target.rawValue
            FileStore.removeLeftovers(of: folder)
            let stage = FileStore.temporaryName(for: folder)
            staged.append((built.target, stage))
            try FileStore.createDirectory(stage)
            for file in built.files {
                let destination = stage + "/" + folderName(file.name)
                if let contents = file.contents {
                    try FileStore.writeAtomically(contents, to: destination, mode: 0o644)
                } else {
                    try FileStore.copyAtomically(file.path, to: destination, mode: 0o644, cancellation: cancellation)
                }
                let copied = try SHA256Digest.ofFile(at: destination, cancellation: cancellation)
                guard copied == file.sha256 else {
                    throw VMFactoryError(.digestMismatch, "\(file.path) changed while it was being published: expected sha256 \(file.sha256), found \(copied)", hint: "nothing was published; publish again once the build is done")
                }
            }
            try FileStore.writeAtomically(checksums(planned[built.target]!), to: stage + "/SHA256SUMS")
        }
        for (target, stage) in staged { try swapIn(stage, as: directory + "/" + target.rawValue) }
        staged = []
        return planned
    }
}
