import Foundation
import Testing
@testable import VMFactoryCore
@testable import VMFactoryKernel

/// Each test's own folder, removed when the test ends, passed or failed. Every suite carries
/// the `.scoped` trait; `TestSupport.temporaryDirectory()` makes folders inside it.
struct TestScope: TestTrait, SuiteTrait, TestScoping {
    var isRecursive: Bool { true }

    @TaskLocal static var root: String?

    /// Where the scopes of this test process live; scopes of test processes that are gone
    /// (killed before they could clean up) are removed on first use.
    static let processRoot: String = {
        let base = NSTemporaryDirectory() + "vmfactory-tests"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? [] {
            guard let pid = name.split(separator: "-").first.flatMap({ pid_t($0) }), pid != getpid() else { continue }
            if kill(pid, 0) != 0, errno == ESRCH { try? FileStore.removeTree(base + "/" + name) }
        }
        return base + "/\(getpid())-\(UUID().uuidString.prefix(8))"
    }()

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        let safe = test.name.filter { $0.isLetter || $0.isNumber }.prefix(40)
        let root = Self.processRoot + "/\(safe)-\(UUID().uuidString.prefix(8))"
        try FileStore.createDirectory(root)
        defer { try? FileStore.removeTree(root) }
        try await Self.$root.withValue(root) { try await function() }
    }
}

extension Trait where Self == TestScope {
    /// Temporary folders and cache state that belong to the test and go with it.
    static var scoped: Self { TestScope() }
}

extension TestSupport {
    /// A fresh folder inside the running test's scope.
    static func temporaryDirectory(_ label: String = #function) throws -> String {
        guard let root = TestScope.root else {
            throw VMFactoryError(.internalError, "temporaryDirectory() outside a scoped test", hint: "add the .scoped trait to the suite")
        }
        let safe = label.filter { $0.isLetter || $0.isNumber }.prefix(40)
        let path = root + "/\(safe)-\(UUID().uuidString.prefix(8))"
        try FileStore.createDirectory(path)
        return path
    }

    /// The cache the shared kernel build uses, kept across test runs in .build so that the
    /// pinned tarball is extracted and the kernels compiled once per checkout (CI's fresh
    /// clone starts it empty). Tests read it; none writes into it but the shared build.
    static let sharedCache: String = repositoryRoot + "/.build/test-cache"

    /// `--timeout` for a test's `vmfactory boot` that checks what a boot does, not how fast:
    /// when the shared kernel is ready, every suite waiting for it boots at once (thirty or
    /// more QEMUs under TCG on two cores in the CI), and a boot that takes a second alone then
    /// takes a minute or more.
    /// (A cold CI run measured one such boot at more than 300 s, with the template suite's
    /// runs beside them.)
    static let bootPatience: Duration = .seconds(600)
    static let bootTimeout = "600s"

    /// A cache of the test's own that shares the shared cache's verified sources and source
    /// trees (read-only, content-addressed) and its ccache folder (a hit is the object a
    /// compile makes: a test's build of the shared build's objects costs little), and holds
    /// copies of `copying` (paths below the cache, such as `builds/container/x86_64` or
    /// `configs`) so that the test can change them. It waits for the shared source tree
    /// (SharedTree): a cache made before it is there would extract a tree of its own.
    static func scopedCache(copying: [String] = [], at location: String? = nil) async throws -> String {
        try await SharedTree.shared.get()
        let cache = try location ?? temporaryDirectory("cache")
        try FileStore.createDirectory(cache)
        try FileStore.createDirectory(sharedCache + "/ccache")
        try FileManager.default.createSymbolicLink(atPath: cache + "/ccache", withDestinationPath: sharedCache + "/ccache")
        for folder in ["sources/sha256", "trees"] {
            let shared = sharedCache + "/" + folder
            try FileStore.createDirectory(cache + "/" + folder)
            for name in (try? FileManager.default.contentsOfDirectory(atPath: shared)) ?? [] where !name.hasPrefix(".") && !name.hasSuffix(".lock") {
                try FileManager.default.createSymbolicLink(atPath: cache + "/" + folder + "/" + name, withDestinationPath: shared + "/" + name)
            }
        }
        for path in copying where FileStore.exists(sharedCache + "/" + path) {
            try FileStore.createDirectory(URL(fileURLWithPath: cache + "/" + path).deletingLastPathComponent().path)
            try await runner.runChecked(Command("cp", ["-a", "--reflink=auto", sharedCache + "/" + path, cache + "/" + path]), what: "copying \(path) of the shared cache")
        }
        return cache
    }
}

/// The pinned source with the container recipe's patches, extracted once into the shared test
/// cache by the real command line (`vmfactory prepare`). Scoped caches link it: on a cold
/// cache, a test that starts before the shared build has made it would otherwise extract a
/// 1.3 GB tree of its own while the shared build extracts the same one, and a CI machine's
/// small disk fills up. The minimal recipe and the tests' own recipes use the same source and
/// series, so the same tree; the shared build waits on the tree's lock, or finds it made.
actor SharedTree {
    static let shared = SharedTree()

    private var task: Task<Void, any Error>?

    func get() async throws {
        if task == nil {
            task = Task {
                let arguments = ["prepare", "--recipe", SharedBuild.recipe, "--offline", "--cache-dir", TestSupport.sharedCache] + (try TestSupport.sourceDirArguments())
                let run = try await TestSupport.runCLI(arguments)
                guard run.status == 0 else { throw VMFactoryError(.processFailed, "vmfactory prepare failed: \(run.stderr)") }
            }
        }
        try await task!.value
    }
}

/// The container recipe built once for both targets in the shared test cache, by the real
/// command line; the tests look at it and copy what they change. One build serves every suite:
/// the run suites boot it, and the kernel, boot, publish and distributed suites check it (the
/// minimal recipe is the container recipe's subset: the same source, patches and trims).
actor SharedBuild {
    static let recipe = "container"
    static let shared = SharedBuild()

    /// The outputs of the shared build, in this test process's folder.
    let output = TestScope.processRoot + "/shared-outputs"

    struct Built: Sendable {
        var output: String
        var results: [BuildResult]
        var stderr: String
    }

    private var task: Task<Built, any Error>?

    func get() async throws -> Built {
        if task == nil {
            task = Task {
                let run = try await TestSupport.runCLI(try SharedBuild.buildArguments(cache: TestSupport.sharedCache, output: output) + ["--format", "json"])
                guard run.status == 0 else { throw VMFactoryError(.processFailed, "vmfactory build failed: \(run.stderr)\n\(run.stdout)") }
                let results = try JSONDecoder().decode([BuildResult].self, from: Data(run.stdout.utf8))
                return Built(output: output, results: results, stderr: run.stderr)
            }
        }
        return try await task!.value
    }

    static func buildArguments(cache: String, output: String, target: String = "all", recipe: String = SharedBuild.recipe) throws -> [String] {
        ["build", "--recipe", recipe, "--target", target, "--offline", "--cache-dir", cache, "--output-dir", output] + (try TestSupport.sourceDirArguments())
    }
}
