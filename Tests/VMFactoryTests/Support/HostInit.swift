import Foundation
@testable import VMFactoryCore
@testable import VMFactoryKernel

/// The guest's init compiled for this host, to run its parsers (`--decode-frames`,
/// `--sample-frames`, `--explain-run`, `--resolve-user`) against what the host's code makes.
enum HostInit {
    /// The init's own sources and warnings, with AddressSanitizer and UBSan: a read past a
    /// frame's end or an overflow aborts with `sanitizerStatus` instead of passing unseen.
    static func compile(to output: String, sanitized: Bool = false) async throws {
        var flags = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-g", "-O1"]
        if sanitized { flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"] }
        try await TestSupport.runner.runChecked(
            Command("gcc", flags + ["-o", output] + InitCompiler.sources, workingDirectory: TestSupport.repositoryRoot + "/Sources/guest-init"),
            what: "compiling the init for this host"
        )
    }

    /// The status a sanitizer's finding ends the program with (the init's own are 0, 1 and 2).
    static let sanitizerStatus: Int32 = 86
    static let sanitizerEnvironment = [
        "ASAN_OPTIONS": "exitcode=86:detect_leaks=1", "UBSAN_OPTIONS": "halt_on_error=1:exitcode=86:print_stacktrace=1",
    ]

    /// Runs `init` with `input` on its stdin; its status and stdout.
    static func run(_ program: String, _ arguments: [String], input: [UInt8]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        process.environment = TestSupport.environment.merging(sanitizerEnvironment) { $1 }
        let stdin = Pipe(), stdout = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Written from another thread: the init's output may fill its pipe before it read all.
        let writer = Thread {
            stdin.fileHandleForWriting.write(Data(input))
            try? stdin.fileHandleForWriting.close()
        }
        writer.start()
        let output = stdout.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let status = process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
        return (status, String(decoding: output, as: UTF8.self))
    }
}

/// SplitMix64: random numbers that repeat for a seed, so that a fuzzed failure repeats.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
