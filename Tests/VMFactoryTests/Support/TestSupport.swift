import Foundation
import Testing
@testable import VMFactory

/// Paths and helpers shared by the tests.
enum TestSupport {
    /// The checkout this test run was built from.
    static let repositoryRoot: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().path
    }()

    static var library: Library { Library(root: repositoryRoot) }

    /// The folders where the pinned kernel tarball is found: `$VMFACTORY_SOURCE_PATH`, then
    /// `../shared/kernel` beside the checkout (where CI puts it).
    static let kernelSourceDirs: [String] = {
        let fromEnvironment = (ProcessInfo.processInfo.environment["VMFACTORY_SOURCE_PATH"] ?? "").split(separator: ":").map(String.init)
        return fromEnvironment + [URL(fileURLWithPath: repositoryRoot).deletingLastPathComponent().path + "/shared/kernel"]
    }()

    static let pinnedTarballName = "linux-source-6.1_6.1.192-2.tar.xz"
    static let pinnedSHA256 = SHA256Digest(hex: "4d415b3d364834fd818270e88813e90323bbfce4f519a0e6bd4940ddcd7df693")!

    static var hasPinnedKernel: Bool {
        kernelSourceDirs.contains { FileStore.isRegularFile($0 + "/" + pinnedTarballName) }
    }

    /// A cache kept across test runs in .build, so the real tarball is extracted once per
    /// checkout; CI's fresh clone starts it empty.
    static let sharedCache: String = repositoryRoot + "/.build/test-cache"

    /// A fresh folder, removed when the test process ends.
    static func temporaryDirectory(_ label: String = #function) throws -> String {
        let safe = label.filter { $0.isLetter || $0.isNumber }
        let path = NSTemporaryDirectory() + "vmfactory-tests/\(safe)-\(UUID().uuidString.prefix(8))"
        try FileStore.createDirectory(path)
        return path
    }

    static func write(_ text: String, to path: String, mode: mode_t = 0o644) throws {
        try FileStore.writeAtomically(text, to: path, mode: mode)
    }

    static func write(_ data: Data, to path: String, mode: mode_t = 0o644) throws {
        try FileStore.writeAtomically(data, to: path, mode: mode)
    }

    /// A workspace on the real library whose outputs go to a temporary folder.
    static func workspace(cache: String = sharedCache, output: String, offline: Bool = true) -> Workspace {
        Workspace(library: library, cacheDirectory: cache, outputDirectory: output, sourceDirs: kernelSourceDirs, offline: offline, environment: [:])
    }

    /// The `vmfactory` executable built next to the test bundle.
    static let executable: String = {
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for folder in [bundle, bundle.deletingLastPathComponent(), URL(fileURLWithPath: repositoryRoot + "/.build/debug")] {
            let candidate = folder.appendingPathComponent("vmfactory").path
            if FileStore.isRegularFile(candidate) { return candidate }
        }
        return repositoryRoot + "/.build/debug/vmfactory"
    }()

    /// Runs the real command line and returns its status, stdout and stderr.
    static func runCLI(_ arguments: [String], environment: [String: String] = [:]) async throws -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = Command.baseEnvironment()
        env["VMFACTORY_HOME"] = repositoryRoot
        for (key, value) in environment { env[key] = value }
        process.environment = env
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        // The blocking reads and the wait run on threads of their own, never on the test
        // pool's few threads, which other tests need to make progress.
        let (o, e) = await withCheckedContinuation { (continuation: CheckedContinuation<(Data, Data), Never>) in
            Thread.detachNewThread {
                let group = DispatchGroup()
                nonisolated(unsafe) var errData = Data()
                group.enter()
                Thread.detachNewThread {
                    errData = err.fileHandleForReading.readDataToEndOfFile()
                    group.leave()
                }
                let outData = out.fileHandleForReading.readDataToEndOfFile()
                group.wait()
                process.waitUntilExit()
                continuation.resume(returning: (outData, errData))
            }
        }
        return (process.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    static func run(_ executable: String, _ arguments: [String], in directory: String? = nil) async throws -> CommandResult {
        var command = Command(executable, arguments)
        command.workingDirectory = directory
        return try await SubprocessRunner().run(command, output: .capture)
    }

    static func files(under root: String) -> [String] {
        guard let enumerator = FileManager.default.enumerator(atPath: root) else { return [] }
        return enumerator.compactMap { $0 as? String }.sorted()
    }
}

/// Marks tests that need the pinned kernel tarball (CI has it beside the checkout).
extension Trait where Self == ConditionTrait {
    static var needsPinnedKernel: Self {
        .enabled(if: TestSupport.hasPinnedKernel, "needs \(TestSupport.pinnedTarballName) in ../shared/kernel or $VMFACTORY_SOURCE_PATH")
    }

    static func needsTool(_ name: String) -> Self {
        .enabled(if: Doctor.findExecutable(name) != nil, "needs \(name) on PATH; `vmfactory doctor` says which package has it")
    }
}

extension TestSupport {
    /// Compiles `Tests/fixtures/NAME.c` for `target` as a small static program.
    static func compileFixture(_ name: String, for target: Target, into directory: String) async throws -> String {
        let source = repositoryRoot + "/Tests/fixtures/\(name).c"
        let output = directory + "/\(name)-\(target)"
        try FileStore.createDirectory(directory)
        try await SubprocessRunner().runChecked(
            Command(target.compiler(), ["-static", "-Os", "-s", "-Wall", "-Werror", "-o", output, source]),
            what: "compiling the fixture \(name) for \(target)"
        )
        return output
    }

    /// A recipe file beside the real library (so it finds fragments and patches), with the
    /// minimal recipe's kernel and `initrd` as given.
    static func recipe(named name: String, initrd: String, in directory: String) throws -> String {
        let minimal = try FileStore.readText(repositoryRoot + "/recipes/minimal.yaml")
        var lines = minimal.components(separatedBy: "\n")
        // Drop the minimal recipe's own initrd section.
        if let start = lines.firstIndex(of: "initrd:") {
            var end = start + 1
            while end < lines.count, lines[end].hasPrefix("  ") || lines[end].isEmpty { end += 1 }
            lines.removeSubrange(start..<end)
        }
        let path = directory + "/\(name).yaml"
        try write(lines.joined(separator: "\n") + "\ninitrd:\n" + initrd + "\n", to: path)
        return path
    }
}

extension TestSupport {
    /// `DIR/recipes/NAME.yaml`: the pinned kernel for x86_64 with a fragment of its own that asks
    /// for virtio-fs while turning FUSE off, so its configuration cannot verify.
    static func writeNoFuseRecipe(named name: String, in directory: String) throws {
        try write("""
            # virtio-fs, but someone turned FUSE off
            # CONFIG_FUSE_FS is not set
            CONFIG_VIRTIO_FS=y
            """, to: directory + "/recipes/configs/common/nofuse.conf")
        try write("""
            description: virtio-fs without FUSE
            kernel:
              version: 6.1.192
              source:
                sha256: \(pinnedSHA256)
              config:
                base: tinyconfig
                fragment-dirs: [configs]
                fragments: [base, nofuse]
              patches:
                series: linux-6.1-microvm
            targets:
              x86_64:
            """, to: directory + "/recipes/\(name).yaml")
    }
}
