import Foundation

/// The cache's housekeeping: `vmfactory clean`. Needs no recipe library, so it works
/// outside a checkout.
public enum CacheCleaner {
    /// What `clean` removed.
    public struct Report: Sendable, Codable {
        public var removed: [String]
        public var bytes: Int64
    }

    /// Removes the build directories of `recipe` (a recipe's name), or of every recipe, or
    /// with `all` everything in the cache: build directories, source trees, filed configs,
    /// ccache and the downloaded sources. Directories in use by a running build are left
    /// alone with a warning.
    public static func clean(_ cacheDirectory: String, recipe: String?, all: Bool, console: Console) async throws -> Report {
        let builds = cacheDirectory + "/builds"
        let candidates: [String]
        if all {
            candidates = ((try? FileManager.default.contentsOfDirectory(atPath: cacheDirectory)) ?? []).sorted().map { cacheDirectory + "/" + $0 }
        } else if let recipe {
            candidates = [builds + "/" + recipe]
        } else {
            candidates = [builds]
        }
        return try await remove(candidates, console: console)
    }

    /// Removes the converted root disks, the content store of images and the kernels pulled
    /// for `--kernel-image` (`clean --images`).
    /// A conversion in progress holds an entry's lock and needs the store: then both stay.
    public static func cleanImages(_ cacheDirectory: String, console: Console) async throws -> Report {
        let rootfs = cacheDirectory + "/rootfs"
        var held: [FileLock] = []
        defer { held.forEach { $0.release() } }
        for lockPath in lockFiles(under: rootfs) {
            guard let lock = FileLock.tryAcquire(lockPath) else {
                console.warning("a conversion is in progress (\(URL(fileURLWithPath: lockPath).lastPathComponent)); images left alone")
                return Report(removed: [], bytes: 0)
            }
            held.append(lock)
        }
        // Unlocked now; the locks held above keep other runs out until the end.
        return try await remove([rootfs, cacheDirectory + "/oci", cacheDirectory + "/kernel-images", cacheDirectory + "/tmp"], console: console, checkingLocks: false)
    }

    /// Removes each of `candidates` that exists, unless another vmfactory holds a lock file in
    /// it (then it stays, with a warning).
    public static func remove(_ candidates: [String], console: Console, checkingLocks: Bool = true) async throws -> Report {
        var report = Report(removed: [], bytes: 0)
        for path in candidates where FileStore.exists(path) {
            var held: [FileLock] = []
            var busy: String? = nil
            for lockPath in checkingLocks ? Self.lockFiles(under: path) : [] {
                guard let lock = FileLock.tryAcquire(lockPath) else { busy = lockPath; break }
                held.append(lock)
            }
            defer { held.forEach { $0.release() } }
            if let busy {
                console.warning("\(FileStore.displayPath(path)) is in use by another vmfactory (\(URL(fileURLWithPath: busy).lastPathComponent)); left alone")
                continue
            }
            let removed = try await BlockingWork.run("removing \(path)") { _ in
                let bytes = FileStore.diskUsage(path)
                try FileStore.removeTree(path)
                return bytes
            }
            report.bytes += removed
            report.removed.append(path)
        }
        return report
    }

    /// The lock files of build directories and source trees below `path`.
    static func lockFiles(under path: String) -> [String] {
        guard FileStore.isDirectory(path) else { return [] }
        guard let enumerator = FileManager.default.enumerator(atPath: path) else { return [] }
        var result: [String] = []
        while let entry = enumerator.nextObject() as? String {
            if entry.hasSuffix(".lock") { result.append(path + "/" + entry) }
            // Lock files sit at the top of builds/<recipe>/ and trees/; never inside a tree.
            if entry.split(separator: "/").count >= 2 { enumerator.skipDescendants() }
        }
        return result
    }
}
