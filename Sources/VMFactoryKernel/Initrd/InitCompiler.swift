import Foundation
import VMFactoryArchive
import VMFactoryCore

/// Compiles the guest init (C, in `Sources/guest-init/` of the library) for one target as a
/// small static binary with that target's toolchain.
public struct InitCompiler: Sendable {
    /// The C files, compiled in this order.
    public static let sources = ["init.c", "launch.c", "protocol.c", "conf.c", "identity.c", "process.c", "supervise.c", "copy.c", "rootfs.c", "network.c", "container.c", "selftest.c"]
    public static let headers = ["launch.h", "protocol.h", "conf.h", "identity.h", "process.h", "supervise.h", "copy.h", "rootfs.h", "network.h", "container.h", "selftest.h"]
    /// Static, small, stripped; every warning is an error.
    public static let flags = ["-static", "-Os", "-s", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wformat=2", "-fno-asynchronous-unwind-tables"]

    /// The run protocol's version the init speaks (VMF_PROTOCOL_VERSION in protocol.h),
    /// recorded in the build's manifest so that `run` refuses another before it boots.
    public static let runProtocol = 3

    public var sourceDirectory: String
    public var runner: any ProcessRunner

    public init(library: Library, runner: any ProcessRunner) {
        self.sourceDirectory = library.root + "/Sources/guest-init"
        self.runner = runner
    }

    /// Every file the binary is made from, with its sha256, in a fixed order.
    public func inputs() throws -> [(name: String, path: String, sha256: SHA256Digest)] {
        try (Self.sources + Self.headers).map { name in
            let path = sourceDirectory + "/" + name
            guard FileStore.isRegularFile(path) else {
                throw VMFactoryError(.notFound, "the guest init's source \(path) is missing", hint: "point VMFACTORY_HOME at a complete vmfactory checkout")
            }
            return (name, path, try SHA256Digest.ofFile(at: path))
        }
    }

    /// The compiler command, run in the source folder with relative file names so that no
    /// path of this machine ends up in the binary.
    public func command(target: Target, output: String, host: String = Target.hostMachine) -> Command {
        Command(target.compiler(host: host), Self.flags + ["-o", output] + Self.sources, workingDirectory: sourceDirectory)
    }

    /// Compiles into `output` (through a temporary name).
    public func compile(target: Target, output: String, host: String = Target.hostMachine) async throws {
        try FileStore.createDirectory(URL(fileURLWithPath: output).deletingLastPathComponent().path)
        let temporary = FileStore.temporaryName(for: output)
        do {
            try await runner.runChecked(command(target: target, output: temporary, host: host), what: "compiling the \(target) init")
            try FileStore.rename(temporary, to: output)
        } catch {
            unlink(temporary)
            if let failure = error as? VMFactoryError, failure.code == .processFailed,
               failure.details.contains(where: { $0.contains("cannot find -lc") || $0.contains("crt1.o") }) {
                var hinted = failure
                hinted.hint = "the \(target) static C library is missing; `vmfactory doctor --target \(target)` names the package"
                throw hinted
            }
            throw error
        }
    }
}
