import Foundation
import VMFactoryCore
import VMFactoryImage

/// Published kernels for `boot --kernel-image` and `run --kernel-image`: pulled (verified)
/// once into `<cache>/kernel-images/<digest of the image index>/<target>/`, a folder laid out
/// as a build's output folder. The reference is resolved to a digest first and that digest
/// is pulled, so a tag that moves meanwhile cannot put another image under it; a copy found
/// in the cache is checked against its SHA256SUMS before use.
public struct PulledKernels: Sendable {
    public var puller: Puller
    public var root: String

    public init(puller: Puller, cacheDirectory: String) {
        self.puller = puller
        root = cacheDirectory + "/kernel-images"
    }

    /// Where the digest a reference last resolved to is kept, for when its registry is down.
    func rememberedPath(_ reference: ImageReference) -> String {
        root + "/refs/" + SHA256Digest.of(reference.description).hex
    }

    /// The folder holding `target`'s kernel, initrd and manifest.json from `reference`.
    public func directory(for reference: ImageReference, target: Target) async throws -> String {
        FileStore.removeLeftovers(of: root + "/incoming")
        let digest: SHA256Digest
        do {
            guard let resolved = try await puller.rootDigest(reference) else { return try await pullArchive(reference, target: target) }
            digest = resolved
        } catch let error as VMFactoryError where error.code == .fetchFailed {
            // The registry does not answer: the copy this reference named last time, if any.
            guard let text = try? FileStore.readText(rememberedPath(reference)), let remembered = SHA256Digest(hex: text.trimmingCharacters(in: .whitespacesAndNewlines)),
                  let folder = try? intact(root + "/" + remembered.hex + "/" + target.rawValue) else { throw error }
            puller.console.warning("\(reference): \(error.message); booting the copy pulled before (sha256:\(remembered))")
            return folder
        }
        let folder = root + "/" + digest.hex + "/" + target.rawValue
        if let intact = try intact(folder) {
            try? FileStore.writeAtomically(digest.hex + "\n", to: rememberedPath(reference))
            return intact
        }
        let pinned: ImageReference = switch reference {
        case .registry(let name): .registry(ImageSource.split(repository: name).repository + "@sha256:" + digest.hex)
        case .ociLayout(let path, _): .ociLayout(path: path, reference: "sha256:" + digest.hex)
        default: reference
        }
        let result = try await puller.pull(pinned, targets: [target], output: root + "/" + digest.hex, force: true)
        guard result.index == "sha256:" + digest.hex else {
            throw VMFactoryError(.digestMismatch, "\(reference): pulled \(result.index) where sha256:\(digest) was asked for", hint: "the image changed while it was pulled; try again")
        }
        try? FileStore.writeAtomically(digest.hex + "\n", to: rememberedPath(reference))
        return result.targets[0].directory
    }

    /// An archive: its index is inside, so it is read whole, then kept by that digest.
    func pullArchive(_ reference: ImageReference, target: Target) async throws -> String {
        let staging = FileStore.temporaryName(for: root + "/incoming")
        defer { try? FileStore.removeTree(staging) }
        let result = try await puller.pull(reference, targets: [target], output: staging, force: true, locking: false)
        guard let digest = SHA256Digest(hex: String(result.index.dropFirst("sha256:".count))) else {
            throw VMFactoryError(.internalError, "pull returned the index digest '\(result.index)'")
        }
        let folder = root + "/" + digest.hex + "/" + target.rawValue
        if try intact(folder) == nil {
            try FileStore.createDirectory(root + "/" + digest.hex)
            try FolderWriter.swapIn(staging + "/" + target.rawValue, as: folder)
        }
        return folder
    }

    /// `folder` when every file its SHA256SUMS lists still has that sha256; nil when there is
    /// no such folder or a file changed (it is pulled again).
    func intact(_ folder: String) throws -> String? {
        guard let sums = try? FileStore.readText(folder + "/SHA256SUMS") else { return nil }
        for line in sums.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1)
            guard parts.count == 2, let expected = SHA256Digest(hex: String(parts[0])) else { return nil }
            let name = parts[1].trimmingCharacters(in: .whitespaces)
            guard (try? SHA256Digest.ofFile(at: folder + "/" + name)) == expected else {
                puller.console.warning("\(FileStore.displayPath(folder))/\(name) changed since it was pulled; pulling it again")
                return nil
            }
        }
        return folder
    }
}
