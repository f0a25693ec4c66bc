import Foundation
import VMFactoryArchive
import VMFactoryCore

/// The tools that turn a configured tree into a kernel, identified by what they say of their
/// own version. Part of every build key: a compiler update changes the images, so it must
/// change the key.
public struct Toolchain: Sendable, Codable, Hashable {
    /// `<prefix>gcc --version`, first line: the compiler that builds the kernel.
    public var compiler: String
    /// `<prefix>ld --version`, first line.
    public var linker: String
    /// `gcc --version` of the host compiler that builds kbuild's own tools.
    public var hostCompiler: String
    /// `make --version`, first line.
    public var make: String

    public init(compiler: String, linker: String, hostCompiler: String, make: String) {
        self.compiler = compiler
        self.linker = linker
        self.hostCompiler = hostCompiler
        self.make = make
    }

    /// Asks each tool for its version. A tool that is missing fails with doctor's advice.
    public static func identify(target: Target, host: String = Target.hostMachine, runner: any ProcessRunner) async throws -> Toolchain {
        let prefix = target.crossCompilePrefix(host: host) ?? ""
        async let compiler = firstLine(of: prefix + "gcc", runner: runner)
        async let linker = firstLine(of: prefix + "ld", runner: runner)
        async let hostCompiler = firstLine(of: "gcc", runner: runner)
        async let make = firstLine(of: "make", runner: runner)
        return try await Toolchain(compiler: compiler, linker: linker, hostCompiler: hostCompiler, make: make)
    }

    public static func firstLine(of tool: String, runner: any ProcessRunner) async throws -> String {
        let result = try await runner.run(Command(tool, ["--version"]), output: .capture)
        let line = result.output.split(separator: "\n").first.map(String.init) ?? ""
        guard result.succeeded, !line.isEmpty else {
            throw VMFactoryError(
                .missingTool, "\(tool) --version failed (\(result.statusDescription))",
                hint: "run `vmfactory doctor` to see which host tools are missing"
            )
        }
        return line
    }
}
