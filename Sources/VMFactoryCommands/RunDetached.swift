import ArgumentParser
import CLinux
import Foundation
import VMFactoryCore
import VMFactoryExec
import VMFactoryLifecycle
import VMFactoryRun

/// `run -d`: the run's supervisor is vmfactory started again with the same command line, in a
/// session of its own, with no terminal and SIGHUP ignored, so that it outlives the terminal
/// that started it. It owns QEMU (which cannot outlive it), the channel, the record and the
/// log, and answers on the run's control socket. The command that started it prints the id
/// once the command runs, as docker does.
extension Run {
    /// The starting side: the image and kernel made ready here (with progress), then the
    /// supervisor, then the id.
    func startDetached(_ context: CommandContext) async throws {
        let console = settings.console(context)
        // Everything slow happens here, where the user sees it; the supervisor finds it cached.
        guard let session = try await prepare(context, console) else { return }
        let registry = session.registry
        if let name { try registry.reserve(name: name, id: session.id) }
        var reserved = name != nil
        defer { if reserved, let name { registry.release(name: name, id: session.id) } }

        var ends: [Int32] = [-1, -1]
        guard vmf_pipe_cloexec(&ends) == 0 else { throw VMFactoryError(.io, "cannot create a pipe for the run's supervisor") }
        defer { close(ends[0]) }
        try FileStore.createDirectory(session.folders.root)
        let log = session.folders.root + "/.\(session.id).supervisor.log"
        let logFD = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard logFD >= 0 else {
            close(ends[1])
            throw VMFactoryError.io("cannot open the supervisor's log", path: log)
        }
        defer { close(logFD) }
        var arguments = context.arguments
        let at = (arguments.firstIndex(of: "run") ?? -1) + 1
        arguments.insert(contentsOf: ["--supervisor-report", String(ends[1]), "--run-id", session.id], at: at)
        let executable = Self.ownExecutable(context)
        let supervisor: ChildProcess
        do {
            supervisor = try await ChildProcess.spawn(
                Command(executable, arguments), environment: context.environment, stdin: .null, stdout: .descriptor(logFD), stderr: .descriptor(logFD),
                newSession: true, parentDeathSignal: 0, keeping: [ends[1]]
            )
        } catch {
            close(ends[1])
            throw error
        }
        close(ends[1])
        // "started" once the command runs; the end of file alone when the supervisor failed.
        let said = await PipeReader.readAll(ends[0], limit: 4096)
        if String(decoding: said, as: UTF8.self).hasPrefix("started") {
            reserved = false
            context.stdout.writeLine(session.id)
            return
        }
        let status = await supervisor.wait()
        let entry = registry.entry(session.folders.root + "/" + session.id)
        let message = entry?.record.message ?? ((try? FileStore.readText(log)) ?? "").split(separator: "\n").suffix(5).joined(separator: "\n")
        if let entry, entry.record.name != nil { reserved = false }
        context.stderr.writeLine("vmfactory: error: the run did not start: " + (message.isEmpty ? "its supervisor ended (\(status))" : message))
        if let entry { try? registry.remove(entry) }
        unlink(log)
        throw ExitCode(entry?.record.exitCode ?? 125)
    }

    /// The supervisor's side: the session with its output in the run's log.
    func superviseDetached(_ context: CommandContext) async throws {
        signal(SIGHUP, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        let report = supervisorReport ?? -1
        let console = settings.console(context)
        let signals = context.handlesSignals ? SignalForwarding(signals: [SIGINT, SIGTERM]) : nil
        defer { signals?.cancel() }
        var reported = false
        do {
            guard var session = try await RunSession.prepare(signals: signals, stderr: context.stderr, { try await prepare(context, console) }) else { return }
            let log = RunLog(folder: session.folders.root + "/" + session.id)
            session.stdout = .sink { log.append(.stdout, $0) }
            session.stderr = .sink { log.append(.stderr, $0) }
            session.detached = !remove
            session.onStarted = {
                _ = Array("started\n".utf8).withUnsafeBytes { try? FileStore.writeAll(report, $0, path: "the starting command's pipe") }
                close(report)
            }
            reported = true
            let outcome = try await session.run()
            if let message = outcome.message { log.append(.stderr, Data(("vmfactory: " + message + "\n").utf8)) }
            if remove, let name { session.registry.release(name: name, id: session.id) }
            throw ExitCode(outcome.exitCode)
        } catch {
            if !reported, !(error is ExitCode) { close(report) }
            throw Self.exitCode(for: error, context)
        }
    }

    /// The vmfactory binary that is running (for its supervisor), as the kernel knows it.
    static func ownExecutable(_ context: CommandContext) -> String {
        guard context.handlesSignals, let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else {
            return FileStore.absolute(context.executablePath, relativeTo: context.currentDirectory)
        }
        return path
    }
}
