import Foundation
import VMFactoryArchive
import VMFactoryCore

/// An ordered list of patches, quilt style: `DIR/series` names `*.patch` files in `DIR`,
/// one per line; `#` starts a comment.
public struct PatchSeries: Sendable, Hashable {
    public struct Patch: Sendable, Hashable, Codable {
        public var name: String
        public var path: String
        public var sha256: SHA256Digest
    }

    public var name: String
    public var directory: String
    public var patches: [Patch]

    public var seriesFile: String { directory + "/series" }

    public static func load(name: String, directory: String) throws -> PatchSeries {
        let seriesFile = directory + "/series"
        let text = try FileStore.readText(seriesFile)
        let display = FileStore.displayPath(seriesFile)
        var patches: [Patch] = []
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let first = words.first else { continue }
            let patchName = String(first)
            let lineNumber = index + 1
            if words.count > 1 {
                throw VMFactoryError(
                    .invalidRecipe, "\(display):\(lineNumber): unexpected '\(words.dropFirst().joined(separator: " "))' after \(patchName)",
                    hint: "every patch applies with -p1; list one file name per line"
                )
            }
            if patchName.contains("..") || patchName.hasPrefix("/") {
                throw VMFactoryError(.invalidRecipe, "\(display):\(lineNumber): patch '\(patchName)' must be a file inside \(FileStore.displayPath(directory))")
            }
            let path = directory + "/" + patchName
            guard FileStore.isRegularFile(path) else {
                throw VMFactoryError(
                    .invalidRecipe, "\(display):\(lineNumber): unknown patch '\(patchName)': no such file in \(FileStore.displayPath(directory))",
                    hint: "add the file, or remove the line from the series"
                )
            }
            if patches.contains(where: { $0.name == patchName }) {
                throw VMFactoryError(.invalidRecipe, "\(display):\(lineNumber): patch '\(patchName)' is listed twice")
            }
            patches.append(Patch(name: patchName, path: path, sha256: try SHA256Digest.ofFile(at: path)))
        }
        return PatchSeries(name: name, directory: directory, patches: patches)
    }
}
