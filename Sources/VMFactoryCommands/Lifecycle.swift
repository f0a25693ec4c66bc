import ArgumentParser
import CLinux
import Foundation
import Synchronization
import VMFactoryArchive
import VMFactoryCore
import VMFactoryKernel
import VMFactoryExec
import VMFactoryLifecycle
import VMFactoryRun

/// Runs `body` for each run named; says what failed on stderr as docker does, and fails at
/// the end if any did.
func eachRun(_ references: [String], _ context: CommandContext, _ body: (String) throws -> Void) throws {
    var failed = false
    for reference in references {
        do {
            try body(reference)
        } catch {
            context.stderr.writeLine("vmfactory: error: " + VMFactoryError(error).description)
            failed = true
        }
    }
    if failed { throw ExitCode(1) }
}

struct Ps: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the runs, as docker ps lists containers.")

    @OptionGroup var location: RunsLocation

    @Flag(name: [.customShort("a"), .long], help: "All runs, the ended ones too.")
    var all = false

    @Option(help: "table (the default) or json.")
    var format: OutputFormat = .table

    enum OutputFormat: String, ExpressibleByArgument {
        case table, json
    }

    func run() async throws {
        let context = CommandContext.current
        let entries = location.registry(context).list().filter { all || $0.record.status != .exited }
        switch format {
        case .json:
            struct Row: Encodable {
                var record: RunRecord
                var statusText: String
            }
            let data = try RunRecord.encoder.encode(entries.map { Row(record: $0.record, statusText: $0.record.statusText()) })
            context.stdout.writeLine(String(decoding: data, as: UTF8.self))
        case .table:
            var rows = [["RUN ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]]
            for entry in entries {
                let record = entry.record
                var command = record.command.joined(separator: " ").replacingOccurrences(of: "\n", with: " ")
                if command.count > 30 { command = String(command.prefix(29)) + "…" }
                rows.append([
                    record.id, record.image, "\"\(command)\"", RunRecord.age(since: record.created) + " ago", record.statusText(),
                    record.ports.joined(separator: ", "), record.name ?? "",
                ])
            }
            let widths = rows[0].indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
            for row in rows {
                let padded = row.enumerated().map { $0.offset == row.count - 1 ? $0.element : $0.element.padding(toLength: widths[$0.offset] + 3, withPad: " ", startingAt: 0) }
                context.stdout.writeLine(padded.joined())
            }
        }
    }
}

struct Logs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a detached run's output: its stdout to stdout and its stderr to stderr, as docker logs does."
    )

    @OptionGroup var location: RunsLocation

    @Flag(name: [.customShort("f"), .long], help: "Go on printing the output as it comes, until the run ends.")
    var follow = false

    @Option(name: [.customShort("n"), .long], help: "Only the last N lines.")
    var tail: Int?

    @Argument(help: "The run: its id, a unique start of it, or its name.")
    var run: String

    func run() async throws {
        let context = CommandContext.current
        let registry = location.registry(context)
        let entry = try registry.find(run)
        guard entry.record.detached else {
            throw VMFactoryError(.invalidArgument, "the run \(entry.record.id) is attached to its terminal: its output went there", hint: "start runs with -d to keep their output")
        }
        if context.handlesSignals { signal(SIGPIPE, SIG_IGN) }
        var reader = RunLog.Reader(folder: entry.path)
        defer { reader.close() }
        var records = reader.read()
        if let tail { records = Self.lastLines(records, tail) }
        write(records, context)
        guard follow else { return }
        while true {
            let alive = registry.isAlive(entry.path)
            let more = reader.read()
            write(more, context)
            if !alive && more.isEmpty { return }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    func write(_ records: [(RunLog.Stream, Data)], _ context: CommandContext) {
        for (stream, data) in records { (stream == .stdout ? context.stdout : context.stderr).write(data) }
    }

    /// The last `count` lines of the records (a line ends with a line break, or the output).
    static func lastLines(_ records: [(RunLog.Stream, Data)], _ count: Int) -> [(RunLog.Stream, Data)] {
        var lines: [(RunLog.Stream, Data)] = []
        var partial: [RunLog.Stream: Data] = [:]
        for (stream, data) in records {
            var current = partial[stream] ?? Data()
            for byte in data {
                current.append(byte)
                if byte == 0x0a {
                    lines.append((stream, current))
                    current = Data()
                }
            }
            partial[stream] = current
        }
        for (stream, rest) in partial where !rest.isEmpty { lines.append((stream, rest)) }
        return Array(lines.suffix(max(0, count)))
    }
}

struct Stop: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop runs: the command's stop signal (the image's StopSignal, else SIGTERM), then the end of the VM after the timeout."
    )

    @OptionGroup var location: RunsLocation

    @Option(name: [.customShort("t"), .customLong("time")], help: "Seconds to wait for the command to exit before the VM ends.")
    var seconds = 10

    @Argument(help: "The runs.")
    var runs: [String]

    func run() async throws {
        let context = CommandContext.current
        let registry = location.registry(context)
        try eachRun(runs, context) { reference in
            let entry = try registry.find(reference)
            if entry.record.status != .exited, registry.isAlive(entry.path) {
                _ = try RunClient.request(entry, "stop \(seconds)")
            }
            context.stdout.writeLine(reference)
        }
    }
}

struct Kill: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Send a signal to runs' commands (SIGKILL unless -s says another).")

    @OptionGroup var location: RunsLocation

    @Option(name: [.customShort("s"), .long], help: "The signal: KILL, TERM, USR1, 9...")
    var signal = "KILL"

    @Argument(help: "The runs.")
    var runs: [String]

    func run() async throws {
        let context = CommandContext.current
        let number = try Signals.number(of: signal, what: "--signal")
        let registry = location.registry(context)
        try eachRun(runs, context) { reference in
            let entry = try registry.find(reference)
            let answer = try RunClient.request(entry, "kill \(number)")
            guard answer.code == 0 else { throw VMFactoryError(.processFailed, answer.message) }
            context.stdout.writeLine(reference)
        }
    }
}

struct Rm: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove ended runs: their records, logs and writable layers.")

    @OptionGroup var location: RunsLocation

    @Flag(name: [.customShort("f"), .long], help: "End a running run first.")
    var force = false

    @Argument(help: "The runs.")
    var runs: [String]

    func run() async throws {
        let context = CommandContext.current
        let registry = location.registry(context)
        try eachRun(runs, context) { reference in
            var entry = try registry.find(reference)
            if registry.isAlive(entry.path) {
                guard force else {
                    throw VMFactoryError(.invalidArgument, "the run \(entry.record.id) is still running", hint: "stop it first (vmfactory stop \(reference)), or remove it with rm -f")
                }
                _ = try? RunClient.request(entry, "end")
                // The supervisor lets go of the folder as it exits.
                let deadline = ContinuousClock.now + .seconds(30)
                while registry.isAlive(entry.path), ContinuousClock.now < deadline { usleep(20_000) }
                // A foreground run removes its own folder as it ends.
                guard let ended = registry.entry(entry.path) else {
                    registry.release(name: entry.record.name ?? "", id: entry.record.id)
                    context.stdout.writeLine(reference)
                    return
                }
                entry = ended
            }
            try registry.remove(entry)
            unlink(registry.folders.root + "/.\(entry.record.id).supervisor.log")
            context.stdout.writeLine(reference)
        }
    }
}

struct Wait: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Wait until runs end, and print each one's exit status.")

    @OptionGroup var location: RunsLocation

    @Argument(help: "The runs.")
    var runs: [String]

    func run() async throws {
        let context = CommandContext.current
        let registry = location.registry(context)
        try eachRun(runs, context) { reference in
            var entry = try registry.find(reference)
            if entry.record.status != .exited, let answer = try? RunClient.request(entry, "wait") {
                context.stdout.writeLine(String(answer.code))
                return
            }
            // No supervisor to ask: the record says how it ended (bringing it up to date first).
            entry = try registry.find(entry.record.id)
            context.stdout.writeLine(String(entry.record.exitCode ?? 125))
        }
    }
}

struct Inspect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print runs' records as JSON.")

    @OptionGroup var location: RunsLocation

    @Argument(help: "The runs.")
    var runs: [String]

    func run() async throws {
        let context = CommandContext.current
        let registry = location.registry(context)
        var records: [RunRecord] = []
        try eachRun(runs, context) { records.append(try registry.find($0).record) }
        context.stdout.writeLine(String(decoding: try RunRecord.encoder.encode(records), as: UTF8.self))
    }
}

struct Cp: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy files out of a running VM or into it, as docker cp does.",
        usage: "vmfactory cp [OPTIONS] RUN:PATH HOSTPATH|-\n       vmfactory cp [OPTIONS] HOSTPATH|- RUN:PATH",
        discussion: """
            The init makes and reads the tar stream itself, so the image needs no tar. Owners, modes, times, \
            symlinks and hard links are kept. PATH/. copies a folder's contents. `-` is a tar stream on stdout \
            (out) or stdin (in). What comes out of the VM is checked as hostile before anything is written: no \
            absolute names, no `..`, no link that points outside HOSTPATH, no device nodes; nothing is written \
            outside HOSTPATH.
            """
    )

    @OptionGroup var location: RunsLocation

    @Argument(help: "RUN:PATH, or a host path (- for a tar stream on stdin).")
    var source: String

    @Argument(help: "A host path (- for a tar stream on stdout), or RUN:PATH.")
    var destination: String

    /// RUN:PATH when the colon comes before any slash (docker's rule).
    static func runPath(_ argument: String) -> (run: String, path: String)? {
        guard let colon = argument.firstIndex(of: ":"), colon != argument.startIndex, !argument[..<colon].contains("/") else { return nil }
        let path = String(argument[argument.index(after: colon)...])
        // Relative to the container's root, as docker's.
        return (String(argument[..<colon]), path.hasPrefix("/") ? path : "/" + path)
    }

    func validate() throws {
        switch (Self.runPath(source), Self.runPath(destination)) {
        case (nil, nil): throw ValidationError("one side must be RUN:PATH")
        case (.some, .some): throw ValidationError("copying between two runs is not supported; copy to the host first")
        default: break
        }
    }

    func run() async throws {
        let context = CommandContext.current
        do {
            if context.handlesSignals { signal(SIGPIPE, SIG_IGN) }
            let registry = location.registry(context)
            if let from = Self.runPath(source) {
                try copyOut(try registry.find(from.run), from.path, context)
            } else if let to = Self.runPath(destination) {
                try copyIn(try registry.find(to.run), to.path, context)
            }
        } catch {
            context.stderr.writeLine("vmfactory: error: " + VMFactoryError(error).description)
            throw ExitCode(1)
        }
    }

    /// The guest's path without a trailing "/." (and whether it had one), and its last component.
    static func split(_ path: String) -> (path: String, contentsOnly: Bool, base: String) {
        var trimmed = path
        let contentsOnly = trimmed.hasSuffix("/.")
        if contentsOnly { trimmed.removeLast(2) }
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed.removeLast() }
        if trimmed.isEmpty { trimmed = "/" }
        let base = trimmed == "/" ? "." : (trimmed as NSString).lastPathComponent
        return (trimmed, contentsOnly || base == ".", base)
    }

    func copyOut(_ entry: RunRegistry.Entry, _ path: String, _ context: CommandContext) throws {
        let guestPath = Self.split(path).path
        var exec = RunClient.Exec(argv: ["vmfactory-cp"])
        exec.user = "0"
        exec.workdir = "/"
        exec.copyOut = guestPath
        let said = Self.messages()
        if destination == "-" {
            let code = try RunClient.exec(entry, exec, stdout: context.stdout, stderr: said.output, signals: nil)
            guard code == 0 else { throw Self.failed("out of", path, code, said.text()) }
            return
        }
        let target = FileStore.absolute(destination, relativeTo: context.currentDirectory)
        let container = try Self.container(of: target)
        var template = Array((container + "/.vmfactory-cp-XXXXXX.tar").utf8CString)
        let fd = mkstemps(&template, 4)
        guard fd >= 0 else { throw VMFactoryError.io("cannot write a file in", path: container) }
        let stream = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer { unlink(stream) }
        let written = TextOutput.sink { data in data.withUnsafeBytes { try? FileStore.writeAll(fd, $0, path: stream) } }
        let code = try RunClient.exec(entry, exec, stdout: written, stderr: said.output, signals: nil)
        close(fd)
        guard code == 0 else { throw Self.failed("out of", path, code, said.text()) }
        try Self.receive(stream, path: path, target: target, owners: geteuid() == 0)
    }

    /// The folder the copy lands in: `target` when it is one, else the folder it would be in.
    static func container(of target: String) throws -> String {
        let container = FileStore.isDirectory(target) ? target : (target as NSString).deletingLastPathComponent
        guard FileStore.isDirectory(container) else {
            throw VMFactoryError(.notFound, "the folder \(container) does not exist", hint: "make it first, or copy to a path in a folder that exists")
        }
        return container
    }

    /// Unpacks the guest's tar stream of `path` at `target`, as docker cp places it. The guest
    /// made the stream: it is unpacked into a folder of its own beside the target with every
    /// entry checked as hostile (no absolute names, no "..", no link out of the folder, no
    /// device nodes), and only then moved; nothing is written outside the target.
    static func receive(_ stream: String, path: String, target: String, owners: Bool) throws {
        let (_, contentsOnly, base) = split(path)
        let targetIsFolder = FileStore.isDirectory(target)
        let container = try container(of: target)
        var template = Array((container + "/.vmfactory-cp-XXXXXX").utf8CString)
        guard mkdtemp(&template) != nil else { throw VMFactoryError.io("cannot make a folder in", path: container) }
        let staging = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer { try? FileStore.removeTree(staging) }
        _ = try ArchiveExtractor.extract(archive: stream, into: staging, stripTopDirectory: false, owners: owners)
        let extracted = base == "." ? staging : staging + "/" + base
        var st = stat()
        guard lstat(extracted, &st) == 0 else {
            throw VMFactoryError(.hostileArchive, "the run sent no \(base) for \(path)", hint: "the guest's init answered with something else; nothing was written")
        }
        if contentsOnly {
            // A real folder, never one a link leads to.
            guard (st.st_mode & S_IFMT) == S_IFDIR else { throw VMFactoryError(.invalidArgument, "\(path) is not a folder in the run") }
            try FileStore.createDirectory(target)
            for name in try FileManager.default.contentsOfDirectory(atPath: extracted) {
                try place(extracted + "/" + name, at: target + "/" + name)
            }
        } else {
            try place(extracted, at: targetIsFolder ? target + "/" + base : target)
        }
    }

    /// Moves `from` to `to`, replacing a file or link there (not following it), never a folder.
    /// A failed rename leaves both as they were.
    static func place(_ from: String, at to: String) throws {
        var st = stat()
        if lstat(to, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
            throw VMFactoryError(.invalidArgument, "\(to) already exists as a folder", hint: "remove it, or copy to another path")
        }
        guard rename(from, to) == 0 else { throw VMFactoryError.io("cannot move the copy to", path: to) }
    }

    func copyIn(_ entry: RunRegistry.Entry, _ path: String, _ context: CommandContext) throws {
        var exec = RunClient.Exec(argv: ["vmfactory-cp"])
        exec.user = "0"
        exec.workdir = "/"
        exec.copyIn = Self.split(path).path
        exec.interactive = true
        let said = Self.messages()
        guard source != "-" else {
            let code = try RunClient.exec(entry, exec, stdout: said.output, stderr: said.output, signals: nil)
            guard code == 0 else { throw Self.failed("into", path, code, said.text()) }
            return
        }
        let (hostPath, contentsOnly, base) = Self.split(FileStore.absolute(source, relativeTo: context.currentDirectory))
        var st = stat()
        guard lstat(hostPath, &st) == 0 else { throw VMFactoryError.io("cannot read", path: hostPath) }
        let top = contentsOnly ? "" : base
        exec.copyTop = top.isEmpty ? nil : top
        var ends: [Int32] = [-1, -1]
        guard vmf_pipe_cloexec(&ends) == 0 else { throw VMFactoryError(.io, "cannot make a pipe") }
        exec.input = ends[0]
        defer { close(ends[0]) }
        let failure = Mutex<(any Error)?>(nil)
        let writer = ends[1]
        Thread.detachNewThread {
            do {
                try TreeArchiver.write(hostPath, top: top, to: writer)
            } catch {
                failure.withLock { $0 = error }
            }
            close(writer)
        }
        let code = try RunClient.exec(entry, exec, stdout: said.output, stderr: said.output, signals: nil)
        if let error = failure.withLock({ $0 }) { throw error }
        guard code == 0 else { throw Self.failed("into", path, code, said.text()) }
    }

    /// What the guest says on the copy's stderr: its first 16 KiB, for the error message.
    static func messages() -> (output: TextOutput, text: @Sendable () -> String) {
        let kept = Mutex(Data())
        let output = TextOutput.sink { data in kept.withLock { $0.append(data.prefix(max(0, 16384 - $0.count))) } }
        return (output, { String(decoding: kept.withLock { $0 }, as: UTF8.self) })
    }

    static func failed(_ direction: String, _ path: String, _ code: Int32, _ said: String) -> VMFactoryError {
        let message = RunProtocol.printable(said.trimmingCharacters(in: .whitespacesAndNewlines))
        return VMFactoryError(.processFailed, "cannot copy \(direction) the run at \(path)" + (message.isEmpty ? " (status \(code))" : ": " + message))
    }
}
