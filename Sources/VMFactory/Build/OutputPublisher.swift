import Foundation

/// Puts a target's artifacts in place as one set: copied into a hidden folder beside the
/// output directory, the manifest written last, then swapped in by rename. A build that
/// fails or is killed never leaves a folder holding a manifest with artifacts that do not
/// match it; the previous set stays until the new one is complete.
enum OutputPublisher {
    /// Subfolders that outlive a rebuild (benchmark reports of earlier builds).
    static let kept = ["bench"]

    static func publish(files: [(name: String, path: String)], manifest: BuildManifest, to directory: String) throws {
        let url = URL(fileURLWithPath: directory)
        let parent = url.deletingLastPathComponent().path
        let name = url.lastPathComponent
        let suffix = "\(getpid())-\(UInt32.random(in: .min ... .max))"
        let staging = parent + "/.\(name).partial-\(suffix)"
        try FileStore.createDirectory(staging)
        do {
            for file in files {
                try FileStore.copyAtomically(file.path, to: staging + "/" + file.name)
            }
            try FileStore.writeAtomically(try manifest.encoded(), to: staging + "/" + BuildManifest.fileName)
            let old = parent + "/.\(name).old-\(suffix)"
            if FileStore.exists(directory) {
                for keep in kept where FileStore.isDirectory(directory + "/" + keep) {
                    try FileStore.rename(directory + "/" + keep, to: staging + "/" + keep)
                }
                try FileStore.rename(directory, to: old)
            }
            try FileStore.rename(staging, to: directory)
            try? FileStore.removeTree(old)
        } catch {
            try? FileStore.removeTree(staging)
            throw error
        }
    }

    /// Removes hidden folders that a killed publish left beside `directory`.
    static func removeLeftovers(of directory: String, console: Console) {
        let url = URL(fileURLWithPath: directory)
        let parent = url.deletingLastPathComponent().path
        let prefixes = [".\(url.lastPathComponent).partial-", ".\(url.lastPathComponent).old-"]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? [] {
            guard let prefix = prefixes.first(where: entry.hasPrefix) else { continue }
            let pid = entry.dropFirst(prefix.count).split(separator: "-").first.flatMap { pid_t($0) }
            if let pid, pid != getpid(), kill(pid, 0) == 0 { continue }
            console.debug("removing \(entry), left by an interrupted build")
            try? FileStore.removeTree(parent + "/" + entry)
        }
    }
}
