import Foundation
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryBoot
@testable import VMFactoryCommands
@testable import VMFactoryCore
@testable import VMFactoryExec
@testable import VMFactoryKernel

extension Tag {
    /// Values, parsers and small file work: seconds for all of them (`scripts/test --fast`).
    @Tag static var unit: Self
    /// Real tools on real inputs: make on the pinned kernel, patch, compilers, the CLI.
    @Tag static var integration: Self
    /// Real QEMU boots under TCG.
    @Tag static var boot: Self
}

/// Paths and helpers shared by the tests.
enum TestSupport {
    /// The checkout this test run was built from.
    static let repositoryRoot: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().path
    }()

    static var library: Library { Library(root: repositoryRoot) }
    static var recipes: RecipeLoader { RecipeLoader(library: library, currentDirectory: repositoryRoot) }

    /// CI runs with `CI=true`: there a missing tool or tarball fails the test run instead of
    /// skipping the suites that need it.
    static let isCI = ProcessInfo.processInfo.environment["CI"] == "true"

    /// What every child of the tests, and every command they run, sees of the host: the
    /// base variables only, never a `SOURCE_DATE_EPOCH` or `VMFACTORY_SOURCE_PATH` of the
    /// shell that started `swift test`.
    static let environment: [String: String] = {
        var environment = Command.baseEnvironment(from: ProcessInfo.processInfo.environment)
        environment["VMFACTORY_HOME"] = repositoryRoot
        return environment
    }()

    static let runner = LocalProcessRunner(hostEnvironment: environment)
    static let bootRunner = BootRunner(baseEnvironment: Command.baseEnvironment(from: environment))

    static let pinnedTarballName = "linux-source-6.1_6.1.192-2.tar.xz"
    static let pinnedSHA256 = SHA256Digest(hex: "4d415b3d364834fd818270e88813e90323bbfce4f519a0e6bd4940ddcd7df693")!

    /// Where the pinned tarball may be: `$VMFACTORY_SOURCE_PATH`, `../shared/kernel` beside the
    /// checkout (CI puts it there), `/usr/src`, where Debian's linux-source-6.1 puts it, and
    /// vmfactory's own cache, where `vmfactory build` (README command 1) fetched it.
    static let candidateSourceDirs: [String] = {
        let host = ProcessInfo.processInfo.environment
        let fromEnvironment = (host["VMFACTORY_SOURCE_PATH"] ?? "").split(separator: ":").map(String.init)
        let userCache = Workspace.cacheDirectory(given: nil, environment: host, currentDirectory: repositoryRoot) + "/sources/sha256"
        return fromEnvironment + [URL(fileURLWithPath: repositoryRoot).deletingLastPathComponent().path + "/shared/kernel", "/usr/src", userCache]
    }()

    /// The folder that holds a file with the pinned sha256 (whatever its name), found once.
    static let pinnedKernelFolder: String? = {
        for folder in candidateSourceDirs where FileStore.isDirectory(folder) {
            let names = ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).sorted()
            // Likely names first (vmfactory's cache names a file by its sha256), so that a folder
            // of other files is hashed only when needed.
            let likely = [pinnedTarballName, "linux-source-6.1.tar.xz", pinnedSHA256.hex]
            let ordered = names.filter { likely.contains($0) } + names.filter { $0.hasSuffix(".tar.xz") && !likely.contains($0) }
            for name in ordered where FileStore.isRegularFile(folder + "/" + name) {
                if (try? SHA256Digest.ofFile(at: folder + "/" + name)) == pinnedSHA256 { return folder }
            }
        }
        return nil
    }()

    /// `--source-dir` for the pinned tarball; fails the test, saying where it looked, when
    /// there is none (under CI the suites that need it run and fail instead of skipping).
    static func kernelSourceDirs() throws -> [String] {
        guard let folder = pinnedKernelFolder else {
            throw VMFactoryError(
                .notFound, "no file with sha256 \(pinnedSHA256) (the pinned \(pinnedTarballName)) in \(candidateSourceDirs.joined(separator: ", "))",
                hint: "scripts/test fetches it as vmfactory build does; or put the tarball in ../shared/kernel, or set VMFACTORY_SOURCE_PATH"
            )
        }
        return [folder]
    }

    static func sourceDirArguments() throws -> [String] {
        try kernelSourceDirs().flatMap { ["--source-dir", $0] }
    }

    static func hasTool(_ name: String) -> Bool {
        Doctor.findExecutable(name, environment: environment) != nil
    }

    static func write(_ text: String, to path: String, mode: mode_t = 0o644) throws {
        try FileStore.writeAtomically(text, to: path, mode: mode)
    }

    static func write(_ data: Data, to path: String, mode: mode_t = 0o644) throws {
        try FileStore.writeAtomically(data, to: path, mode: mode)
    }

    /// A workspace on the real library.
    static func workspace(cache: String, output: String, offline: Bool = true) throws -> Workspace {
        Workspace(
            library: library, cacheDirectory: cache, outputDirectory: output, sourceDirs: (try? kernelSourceDirs()) ?? [],
            offline: offline, environment: environment, currentDirectory: repositoryRoot
        )
    }

    static func factory(cache: String, output: String, console: Console = .recording(), runner: any ProcessRunner = runner) throws -> Factory {
        Factory(workspace: try workspace(cache: cache, output: output), runner: runner, console: console)
    }

    /// The `vmfactory` executable built next to the test bundle.
    static let executable = builtExecutable("vmfactory")
    /// The OCI runtime `vmfactory-runtime`, built beside it.
    static let runtimeExecutable = builtExecutable("vmfactory-runtime")

    /// An executable product of the package, found next to the test bundle.
    static func builtExecutable(_ name: String) -> String {
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for folder in [bundle, bundle.deletingLastPathComponent(), URL(fileURLWithPath: repositoryRoot + "/.build/debug")] {
            let candidate = folder.appendingPathComponent(name).path
            if FileStore.isRegularFile(candidate) { return candidate }
        }
        return repositoryRoot + "/.build/debug/" + name
    }

    /// What a command printed and how it ended.
    struct Run: Sendable {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Parses and runs a command in this process, its output captured. Its context fails
    /// closed: it runs no process unless `runner` is given, and sees only `environment`.
    static func runCommand(_ arguments: [String], runner: any ProcessRunner = RefusingRunner(), environment extra: [String: String] = [:]) async -> Run {
        let stdout = TextOutput.memory(), stderr = TextOutput.memory()
        let context = CommandContext(
            environment: environment.merging(extra) { $1 }, currentDirectory: repositoryRoot, executablePath: executable,
            stdout: stdout, stderr: stderr, runner: runner, handlesSignals: false
        )
        let status = await VMFactoryCommand.run(arguments, in: context)
        return Run(status: status, stdout: stdout.text, stderr: stderr.text)
    }

    /// Runs the real executable, for what needs a process of its own (signals, a kill).
    static func runCLI(_ arguments: [String], environment extra: [String: String] = [:]) async throws -> Run {
        let command = Command(executable, arguments, environment: extra)
        let child = try await ChildProcess.spawn(command, environment: command.environment(on: environment), stdout: .pipe, stderr: .pipe)
        async let out = PipeReader.readAll(child.stdout!)
        async let err = PipeReader.readAll(child.stderr!)
        let termination = await child.wait()
        let status: Int32
        switch termination {
        case .exited(let code): status = code
        case .signaled(let signal): status = 128 + signal
        }
        return Run(status: status, stdout: String(decoding: await out, as: UTF8.self), stderr: String(decoding: await err, as: UTF8.self))
    }

    static func run(_ executable: String, _ arguments: [String], in directory: String? = nil) async throws -> CommandResult {
        try await runner.run(Command(executable, arguments, workingDirectory: directory), output: .capture)
    }

    static func sha256sum(_ path: String) async throws -> String {
        let result = try await run("sha256sum", [path])
        return String(result.output.prefix(64))
    }

    static func files(under root: String) -> [String] {
        guard let enumerator = FileManager.default.enumerator(atPath: root) else { return [] }
        return enumerator.compactMap { $0 as? String }.sorted()
    }

    /// Polls `condition` every 20 ms for at most `seconds`.
    static func eventually(within seconds: Double, _ condition: () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return condition()
    }
}

/// Marks tests that need the pinned kernel tarball or a host tool. Outside CI they are
/// skipped, saying what is missing; under CI they run, and fail with that message.
extension Trait where Self == ConditionTrait {
    static var needsPinnedKernel: Self {
        .enabled(if: TestSupport.isCI || TestSupport.pinnedKernelFolder != nil, "needs \(TestSupport.pinnedTarballName) (by sha256) in vmfactory's cache, ../shared/kernel, /usr/src or $VMFACTORY_SOURCE_PATH; scripts/test fetches it")
    }

    static func needsTool(_ name: String) -> Self {
        .enabled(if: TestSupport.isCI || TestSupport.hasTool(name), "needs \(name) on PATH; `vmfactory doctor` says which package has it")
    }
}

extension TestSupport {
    /// Compiles `Tests/fixtures/NAME.c` for `target` as a small static program.
    static func compileFixture(_ name: String, for target: Target, into directory: String) async throws -> String {
        let source = repositoryRoot + "/Tests/fixtures/\(name).c"
        let output = directory + "/\(name)-\(target)"
        try FileStore.createDirectory(directory)
        try await runner.runChecked(
            Command(target.compiler(), ["-static", "-Os", "-s", "-Wall", "-Werror", "-o", output, source]),
            what: "compiling the fixture \(name) for \(target)"
        )
        return output
    }

    /// A recipe file beside the real library (so it finds fragments and patches), with the
    /// shared build's kernel (the container recipe's) and `initrd` as given.
    static func recipe(named name: String, initrd: String, in directory: String) throws -> String {
        let shared = try FileStore.readText(repositoryRoot + "/recipes/\(SharedBuild.recipe).yaml")
        var lines = shared.components(separatedBy: "\n")
        // Drop the recipe's own initrd section.
        if let start = lines.firstIndex(of: "initrd:") {
            var end = start + 1
            while end < lines.count, lines[end].hasPrefix("  ") || lines[end].isEmpty { end += 1 }
            lines.removeSubrange(start..<end)
        }
        let path = directory + "/\(name).yaml"
        try write(lines.joined(separator: "\n") + "\ninitrd:\n" + initrd + "\n", to: path)
        return path
    }

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
