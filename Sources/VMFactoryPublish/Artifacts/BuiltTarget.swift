import Foundation
import VMFactoryCore
import VMFactoryKernel

/// One target's build, as published: the files a runtime boots, each checked against the
/// build's manifest before anything is written.
public struct BuiltTarget: Sendable {
    /// A file of the published set: its name under `/boot` (and in a `dir:` folder).
    public struct File: Sendable, Hashable {
        public var name: String
        public var path: String
        public var sha256: SHA256Digest
        public var size: Int64
        /// The bytes, for a file made for publishing (the build manifest as published).
        public var contents: Data?

        public init(name: String, path: String, sha256: SHA256Digest, size: Int64, contents: Data? = nil) {
            self.name = name
            self.path = path
            self.sha256 = sha256
            self.size = size
            self.contents = contents
        }

        public func data() throws -> Data { try contents ?? FileStore.readData(path) }
    }

    /// What the image's layer calls the build manifest; `dir:` folders call it manifest.json.
    public static let manifestName = "vmfactory-manifest.json"

    public var target: Target
    /// The build manifest as published (see `publishable`).
    public var manifest: BuildManifest
    public var manifestData: Data
    /// The artifacts, in the order the layer lists them (the manifest last).
    public var files: [File]

    /// The kernel image a runtime boots: the PVH vmlinux on x86_64, bzImage on s390x.
    public var bootKernel: File? { files.first { $0.name == Self.bootKernelName(for: target) } }
    public var initrd: File? { files.first { Self.isInitrd($0.name) } }

    public static func bootKernelName(for target: Target) -> String { target == .x86_64 ? "vmlinux" : "bzImage" }
    static func isInitrd(_ name: String) -> Bool { name.hasPrefix("initrd.cpio") }

    /// The names a published set may hold, for `target` (anything else in a layer is refused).
    public static func allowedNames(for target: Target) -> Set<String> {
        var names: Set<String> = ["bzImage", "config", "System.map", manifestName]
        if target == .x86_64 { names.insert("vmlinux") }
        for suffix in ["", ".gz", ".zst", ".lz4"] { names.insert("initrd.cpio" + suffix) }
        return names
    }

    /// The build of `recipe` for `target` in `directory` (outputs/<recipe>/<target>), verified:
    /// every artifact has the size and sha256 its manifest records.
    public static func load(directory: String, recipe: String, target: Target) async throws -> BuiltTarget {
        let buildHint = "run `vmfactory build --recipe \(recipe) --target \(target)` first"
        let manifestPath = directory + "/" + BuildManifest.fileName
        guard FileStore.isRegularFile(manifestPath) else {
            throw VMFactoryError(.notFound, "\(recipe)/\(target) is not built: no \(FileStore.displayPath(manifestPath))", hint: buildHint)
        }
        let data = try FileStore.readData(manifestPath)
        let manifest = try JSON.decode(BuildManifest.self, from: data, what: "the build manifest \(manifestPath)", hint: buildHint)
        guard manifest.target == target, manifest.recipe.name == recipe else {
            throw VMFactoryError(.invalidArgument, "\(FileStore.displayPath(manifestPath)) describes \(manifest.recipe.name)/\(manifest.target), not \(recipe)/\(target)", hint: buildHint)
        }
        guard manifest.kernel != nil, manifest.initrd != nil else {
            throw VMFactoryError(.notFound, "\(recipe)/\(target) has no complete build (kernel and initrd) in \(FileStore.displayPath(directory))", hint: buildHint)
        }
        let problems = try await manifest.verify(in: directory)
        guard problems.isEmpty else {
            throw VMFactoryError(
                .digestMismatch, "the artifacts of \(recipe)/\(target) do not match their manifest: \(problems.joined(separator: "; "))",
                hint: "nothing was published; build again (`vmfactory build --recipe \(recipe) --target \(target)`) so that the files and the manifest agree"
            )
        }
        let allowed = allowedNames(for: target)
        let order = ["vmlinux", "bzImage"]
        var files = manifest.artifacts.filter { allowed.contains($0.name) }
            .sorted { (order.firstIndex(of: $0.name) ?? 2, $0.name) < (order.firstIndex(of: $1.name) ?? 2, $1.name) }
            .map { File(name: $0.name, path: directory + "/" + $0.name, sha256: $0.sha256, size: $0.size) }
        guard files.contains(where: { $0.name == bootKernelName(for: target) }), files.contains(where: { isInitrd($0.name) }) else {
            throw VMFactoryError(.notFound, "the build of \(recipe)/\(target) lacks \(bootKernelName(for: target)) or its initrd", hint: buildHint)
        }
        let published = publishable(manifest)
        let publishedData = try published.encoded()
        files.append(File(name: manifestName, path: manifestPath, sha256: SHA256Digest.of(publishedData), size: Int64(publishedData.count), contents: publishedData))
        return BuiltTarget(target: target, manifest: published, manifestData: publishedData, files: files)
    }

    /// The manifest without what names the building machine: a source found at a local path
    /// keeps its sha256 and tree key, not the path (an apt package or a URL is kept), a
    /// kernel taken from a build cache does not say so, and the logs (not published) are not
    /// listed. So two reproducible builds on two
    /// machines publish the same bytes.
    public static func publishable(_ manifest: BuildManifest) -> BuildManifest {
        var published = manifest
        if published.kernel?.source.origin?.kind == .path { published.kernel?.source.origin = nil }
        published.cachedFrom = nil
        // Logs vary from build to build and are not published.
        published.logs = []
        return published
    }
}
