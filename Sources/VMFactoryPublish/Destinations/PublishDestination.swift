import Foundation
import VMFactoryCore

/// Where `vmfactory publish` writes: an OCI image layout, the same as a tar file, a registry
/// (through skopeo), or plain files per architecture.
public enum PublishDestination: Sendable, Hashable, CustomStringConvertible {
    case layout(path: String, tag: String?)
    case archive(path: String, tag: String?)
    /// `HOST/REPO` and its tag.
    case registry(repository: String, tag: String?)
    case folder(path: String)

    /// Parses `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker://HOST/REPO[:TAG]` and `dir:DIR`.
    public init(parsing text: String, currentDirectory: String) throws {
        func path(_ rest: Substring) -> String { FileStore.absolute(String(rest), relativeTo: currentDirectory) }
        func split(_ rest: Substring) -> (Substring, String?) {
            guard let colon = rest.firstIndex(of: ":") else { return (rest, nil) }
            let tag = String(rest[rest.index(after: colon)...])
            return (rest[..<colon], tag.isEmpty ? nil : tag)
        }
        let invalid = VMFactoryError(
            .invalidArgument, "'\(text)' is no destination vmfactory publishes to",
            hint: "give oci:DIR[:TAG], oci-archive:FILE[:TAG], docker://HOST/REPO:TAG or dir:DIR"
        )
        if text.hasPrefix("docker://") {
            let name = text.dropFirst("docker://".count)
            guard !name.isEmpty, !name.contains(" ") else { throw invalid }
            if name.contains("@") {
                throw VMFactoryError(.invalidArgument, "\(text): a digest names what is there; publish to a tag", hint: "give docker://HOST/REPO:TAG")
            }
            let slash = name.lastIndex(of: "/") ?? name.startIndex
            if let colon = name[slash...].lastIndex(of: ":") {
                self = .registry(repository: String(name[..<colon]), tag: String(name[name.index(after: colon)...]))
            } else {
                self = .registry(repository: String(name), tag: nil)
            }
        } else if text.hasPrefix("oci-archive:") {
            let (file, tag) = split(text.dropFirst("oci-archive:".count))
            guard !file.isEmpty else { throw invalid }
            self = .archive(path: path(file), tag: tag)
        } else if text.hasPrefix("oci:") {
            let (folder, tag) = split(text.dropFirst("oci:".count))
            guard !folder.isEmpty else { throw invalid }
            self = .layout(path: path(folder), tag: tag)
        } else if text.hasPrefix("dir:") {
            let folder = text.dropFirst("dir:".count)
            guard !folder.isEmpty else { throw invalid }
            self = .folder(path: path(folder))
        } else {
            throw invalid
        }
    }

    /// The tag in the destination itself, if any.
    public var tag: String? {
        switch self {
        case .layout(_, let tag), .archive(_, let tag), .registry(_, let tag): tag
        case .folder: nil
        }
    }

    public var description: String {
        switch self {
        case .layout(let path, let tag): "oci:\(path)" + (tag.map { ":" + $0 } ?? "")
        case .archive(let path, let tag): "oci-archive:\(path)" + (tag.map { ":" + $0 } ?? "")
        case .registry(let repository, let tag): "docker://\(repository)" + (tag.map { ":" + $0 } ?? "")
        case .folder(let path): "dir:\(path)"
        }
    }

    /// A tag as OCI distribution allows it: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
    public static func isValidTag(_ tag: String) -> Bool {
        guard let first = tag.unicodeScalars.first, tag.unicodeScalars.count <= 128 else { return false }
        func plain(_ scalar: Unicode.Scalar) -> Bool { scalar.isASCII && (CharacterSet.alphanumerics.contains(scalar) || scalar == "_") }
        return plain(first) && tag.unicodeScalars.allSatisfy { plain($0) || $0 == "." || $0 == "-" }
    }
}
