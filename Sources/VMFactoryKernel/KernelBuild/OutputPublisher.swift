import Foundation
import VMFactoryArchive
import VMFactoryCore

/// Puts a target's artifacts in place as one set: copied into a hidden folder beside the
/// output directory, the manifest written last, then swapped in by rename. A build that
/// fails or is killed never leaves a folder holding a manifest with artifacts that do not
/// match it; the previous set stays until the new one is complete.
enum OutputPublisher {
    /// Subfolders that outlive a rebuild (benchmark reports of earlier builds).
    static let kept = ["bench"]

    static func publish(files: [(name: String, path: String)], manifest: BuildManifest, to directory: String) async throws {
        let staging = FileStore.temporaryName(for: directory)
        try FileStore.createDirectory(staging)
        do {
            let copies = files.map { ($0.path, staging + "/" + $0.name) }
            try await BlockingWork.run("copying the artifacts into \(FileStore.displayPath(directory))") { cancellation in
                for (source, destination) in copies {
                    try FileStore.copyAtomically(source, to: destination, cancellation: cancellation)
                }
            }
            try FileStore.writeAtomically(try manifest.encoded(), to: staging + "/" + BuildManifest.fileName)
            let old = FileStore.temporaryName(for: directory)
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
        for leftover in FileStore.removeLeftovers(of: directory) {
            console.debug("removed \(URL(fileURLWithPath: leftover).lastPathComponent), left by an interrupted build")
        }
    }
}
