import Foundation
import VMFactoryCore

/// Reads files out of Debian packages with libarchive: a .deb is an `ar` archive whose
/// `data.tar.*` member holds the package's files.
public enum DebPackage {
    /// Streams the file `member` (for example `usr/src/linux-source-6.1.tar.xz`) of the
    /// package at `debPath` to `body`.
    public static func extractMember(_ member: String, from debPath: String, to body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let wanted = normalized(member)
        let outer = try ArchiveReader(path: debPath)
        while try outer.nextEntry() != nil {
            guard outer.currentPath.hasPrefix("data.tar") else { continue }
            let inner = try ArchiveReader(entryOf: outer)
            var similar: [String] = []
            let (wantedFolder, wantedBase) = split(wanted)
            while try inner.nextEntry() != nil {
                let name = normalized(inner.currentPath)
                if name == wanted {
                    try inner.readData(body)
                    return
                }
                let (folder, base) = split(name)
                if !name.hasSuffix("/"), base == wantedBase || folder == wantedFolder {
                    similar.append(name)
                }
            }
            throw VMFactoryError(
                .notFound, "\(URL(fileURLWithPath: debPath).lastPathComponent) has no file \(wanted)",
                hint: similar.isEmpty ? "check the recipe's apt.member" : "files nearby in the package: \(similar.prefix(8).joined(separator: ", "))"
            )
        }
        throw VMFactoryError(.archiveFailed, "\(debPath) is not a Debian package: it has no data.tar member")
    }

    /// ("usr/src", "linux.tar.xz") for "usr/src/linux.tar.xz".
    static func split(_ path: String) -> (folder: String, name: String) {
        guard let slash = path.lastIndex(of: "/") else { return ("", path) }
        return (String(path[..<slash]), String(path[path.index(after: slash)...]))
    }

    static func normalized(_ path: String) -> String {
        var name = Substring(path)
        while name.hasPrefix("./") { name = name.dropFirst(2) }
        while name.hasPrefix("/") { name = name.dropFirst() }
        return String(name)
    }
}
