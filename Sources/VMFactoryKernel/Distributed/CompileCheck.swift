import Foundation
import VMFactoryCore

/// A small C file compiled here with each compiler, so that what an engine's helpers make of
/// it can be compared with this machine's bytes, in a work folder below the cache.
struct CompileCheck {
    enum Outcome: Equatable {
        /// The engine made the bytes this machine makes.
        case same
        /// The engine's compile failed; its last line.
        case failed(String)
        /// The engine made other bytes.
        case differs
        /// The compiler does not compile here, so there is nothing to compare with; its last line.
        case noReference(String)
    }

    let runner: any ProcessRunner
    let work: String
    private var local: [String: Result<Data, CompileFailure>] = [:]

    struct CompileFailure: Error {
        var said: String
    }

    /// Makes the work folder and compiles the file here with each of `compilers`.
    static func make(runner: any ProcessRunner, cacheDirectory: String, compilers: [String]) async throws -> CompileCheck {
        try FileStore.createDirectory(cacheDirectory + "/tmp")
        var check = CompileCheck(runner: runner, work: FileStore.temporaryName(for: cacheDirectory + "/tmp/compile-check"))
        try FileStore.createDirectory(check.work)
        try FileStore.writeAtomically("int vmfactory_compile_check(int x) { return x * 3; }\n", to: check.work + "/check.c")
        for compiler in Set(compilers) {
            let object = "local-\(compiler).o"
            let result = try await runner.run(Command(compiler, ["-c", "check.c", "-o", object], workingDirectory: check.work), output: .capture)
            check.local[compiler] = result.succeeded
                ? .success(try FileStore.readData(check.work + "/" + object))
                : .failure(CompileFailure(said: Self.lastLine(result)))
        }
        return check
    }

    private init(runner: any ProcessRunner, work: String) {
        self.runner = runner
        self.work = work
    }

    /// Compiles the file with `executable COMPILER -c check.c -o OBJECT` (distcc, icecc) and
    /// compares the object with this machine's.
    func compare(_ compiler: String, engine executable: String, environment: [String: String], object: String) async throws -> Outcome {
        guard case .success(let expected) = local[compiler] else {
            if case .failure(let failure) = local[compiler] { return .noReference(failure.said) }
            return .noReference("not compiled here")
        }
        let command = Command(executable, [compiler, "-c", "check.c", "-o", object], environment: environment, workingDirectory: work)
        let result = try await runner.run(command, output: .capture)
        guard result.succeeded else { return .failed(Self.lastLine(result)) }
        return (try? FileStore.readData(work + "/" + object)) == expected ? .same : .differs
    }

    func remove() {
        try? FileStore.removeTree(work)
    }

    static func lastLine(_ result: CommandResult) -> String {
        result.output.split(separator: "\n").last.map(String.init) ?? result.statusDescription
    }
}
