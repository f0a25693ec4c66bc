import Foundation
import VMFactoryCore
import VMFactoryImage

/// Published kernels for `boot --kernel-image` and `run --kernel-image`: pulled (verified)
/// once into `<cache>/kernel-images/<digest of what the reference names>/<target>/`, a
/// folder laid out as a build's output folder.
public struct PulledKernels: Sendable {
    public var puller: Puller
    public var root: String

    public init(puller: Puller, cacheDirectory: String) {
        self.puller = puller
        root = cacheDirectory + "/kernel-images"
    }

    /// The folder holding `target`'s kernel, initrd and manifest.json from `reference`.
    public func directory(for reference: ImageReference, target: Target) async throws -> String {
        if let digest = try await puller.rootDigest(reference) {
            let folder = root + "/" + digest.hex + "/" + target.rawValue
            if FileStore.isRegularFile(folder + "/manifest.json") { return folder }
            let result = try await puller.pull(reference, targets: [target], output: root + "/" + digest.hex, force: true)
            return result.targets[0].directory
        }
        // An archive: its index is inside, so it is read whole, then kept by that digest.
        let staging = FileStore.temporaryName(for: root + "/incoming")
        defer { try? FileStore.removeTree(staging) }
        let result = try await puller.pull(reference, targets: [target], output: staging, force: true)
        guard let digest = SHA256Digest(hex: String(result.index.dropFirst("sha256:".count))) else {
            throw VMFactoryError(.internalError, "pull returned the index digest '\(result.index)'")
        }
        let folder = root + "/" + digest.hex + "/" + target.rawValue
        if !FileStore.isRegularFile(folder + "/manifest.json") {
            try FileStore.createDirectory(root + "/" + digest.hex)
            try FolderWriter.swapIn(staging + "/" + target.rawValue, as: folder)
        }
        return folder
    }
}
