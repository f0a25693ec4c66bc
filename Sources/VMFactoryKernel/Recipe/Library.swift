import Foundation
import VMFactoryArchive
import VMFactoryCore

/// vmfactory's own folder of recipes, kernel config fragments and patch series.
///
/// Found, in order: `$VMFACTORY_HOME`; the nearest folder above the executable that holds
/// `recipes/` and `kernel-configs/` (a checkout running its own `.build/.../vmfactory`);
/// the current directory or one of its parents holding both.
public struct Library: Sendable, Hashable {
    public var root: String

    public init(root: String) {
        self.root = URL(fileURLWithPath: root).standardizedFileURL.path
    }

    public var recipesDirectory: String { root + "/recipes" }
    public var fragmentsDirectory: String { root + "/kernel-configs" }
    public var patchesDirectory: String { root + "/patches" }
    public var defaultOutputDirectory: String { root + "/outputs" }

    public static func locate(environment: [String: String], executablePath: String, currentDirectory: String) throws -> Library {
        if let home = environment["VMFACTORY_HOME"], !home.isEmpty {
            guard isLibrary(home) else {
                throw VMFactoryError(.notFound, "VMFACTORY_HOME=\(home) holds no recipes/ and kernel-configs/", hint: "point VMFACTORY_HOME at a vmfactory checkout, or unset it")
            }
            return Library(root: home)
        }
        let executable = URL(fileURLWithPath: executablePath, relativeTo: URL(fileURLWithPath: currentDirectory)).resolvingSymlinksInPath()
        for start in [executable.deletingLastPathComponent(), URL(fileURLWithPath: currentDirectory)] {
            var folder = start.standardizedFileURL
            while true {
                if isLibrary(folder.path) { return Library(root: folder.path) }
                let parent = folder.deletingLastPathComponent()
                if parent.path == folder.path { break }
                folder = parent
            }
        }
        throw VMFactoryError(
            .notFound, "cannot find vmfactory's recipes/ and kernel-configs/",
            hint: "run vmfactory from its checkout, or set VMFACTORY_HOME to the checkout"
        )
    }

    static func isLibrary(_ path: String) -> Bool {
        FileStore.isDirectory(path + "/recipes") && FileStore.isDirectory(path + "/kernel-configs")
    }

    public func recipeNames() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: recipesDirectory)) ?? []
        return names.filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") }
            .map { URL(fileURLWithPath: $0).deletingPathExtension().lastPathComponent }
            .sorted()
    }
}
