import Foundation
import VMFactoryCore

/// Where an image comes from, written as skopeo writes its transports.
public enum ImageReference: Sendable, Hashable, CustomStringConvertible {
    /// An OCI image layout folder; `reference` a tag (`org.opencontainers.image.ref.name`) or a digest.
    case ociLayout(path: String, reference: String?)
    /// An OCI image layout in a tar file.
    case ociArchive(path: String, reference: String?)
    /// What `docker save` writes; `reference` a `NAME:TAG` of its RepoTags.
    case dockerArchive(path: String, reference: String?)
    /// A registry, through skopeo: `HOST/REPO[:TAG|@sha256:…]`.
    case registry(String)
    /// A plain root file system tarball, with an optional image config beside.
    case rootfsTarball(path: String)

    /// Parses `oci:DIR[:REF]`, `oci-archive:FILE[:REF]`, `docker-archive:FILE[:NAME:TAG]`,
    /// `docker://HOST/REPO[:TAG|@DIGEST]` and `tar:FILE`; relative paths against `currentDirectory`.
    public init(parsing text: String, currentDirectory: String) throws {
        func path(_ rest: Substring) -> String { FileStore.absolute(String(rest), relativeTo: currentDirectory) }
        /// "FILE[:REF]" where the file part may not contain ':'; a digest reference holds one.
        func split(_ rest: Substring) -> (Substring, String?) {
            guard let colon = rest.firstIndex(of: ":") else { return (rest, nil) }
            let reference = String(rest[rest.index(after: colon)...])
            return (rest[..<colon], reference.isEmpty ? nil : reference)
        }
        if text.hasPrefix("docker://") {
            let name = String(text.dropFirst("docker://".count))
            guard !name.isEmpty, !name.contains(" ") else { throw Self.invalid(text) }
            self = .registry(name)
        } else if text.hasPrefix("oci-archive:") {
            let (file, reference) = split(text.dropFirst("oci-archive:".count))
            guard !file.isEmpty else { throw Self.invalid(text) }
            self = .ociArchive(path: path(file), reference: reference)
        } else if text.hasPrefix("oci:") {
            let (folder, reference) = split(text.dropFirst("oci:".count))
            guard !folder.isEmpty else { throw Self.invalid(text) }
            self = .ociLayout(path: path(folder), reference: reference)
        } else if text.hasPrefix("docker-archive:") {
            let (file, reference) = split(text.dropFirst("docker-archive:".count))
            guard !file.isEmpty else { throw Self.invalid(text) }
            self = .dockerArchive(path: path(file), reference: reference)
        } else if text.hasPrefix("tar:") {
            let file = text.dropFirst("tar:".count)
            guard !file.isEmpty else { throw Self.invalid(text) }
            self = .rootfsTarball(path: path(file))
        } else {
            throw Self.invalid(text)
        }
    }

    static func invalid(_ text: String) -> VMFactoryError {
        VMFactoryError(
            .invalidArgument, "'\(text)' is not an image reference vmfactory reads",
            hint: "write oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG], docker://HOST/REPO[:TAG] or tar:FILE"
        )
    }

    public var description: String {
        switch self {
        case .ociLayout(let path, let reference): return "oci:" + path + (reference.map { ":" + $0 } ?? "")
        case .ociArchive(let path, let reference): return "oci-archive:" + path + (reference.map { ":" + $0 } ?? "")
        case .dockerArchive(let path, let reference): return "docker-archive:" + path + (reference.map { ":" + $0 } ?? "")
        case .registry(let name): return "docker://" + name
        case .rootfsTarball(let path): return "tar:" + path
        }
    }
}
