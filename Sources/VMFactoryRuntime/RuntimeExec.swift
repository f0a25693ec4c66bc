import CLinux
import Foundation
import Synchronization
import VMFactoryCore
import VMFactoryLifecycle

/// `exec --process FILE [--detach] [--pid-file FILE] [--tty --console-socket SOCK] ID`: a
/// process in the container's VM. Its pid is a relay, a descendant of the call, that carries
/// the process's stdio between the fds it was given (or its terminal) and the VM, and exits with
/// the process's status, as conmon and containerd's shim expect of an exec's pid.
extension Runtime {
    func exec() async throws -> Int32 {
        let id = try line.containerID()
        let state = try loadState(id)
        guard state.currentStatus == .running else {
            throw VMFactoryError(.invalidArgument, "cannot exec in container \(id): it is \(state.currentStatus.rawValue)", hint: "start it first")
        }
        guard let processFile = line.flag("process", "p") else {
            throw VMFactoryError(.invalidArgument, "exec needs --process FILE (the OCI process to run)", hint: "vmfactory-runtime exec --process FILE ID")
        }
        let process = try Self.loadProcess(FileStore.absolute(processFile, relativeTo: FileManager.default.currentDirectoryPath))
        _ = try runEntry(state)
        let detach = line.isSet("detach", "d")
        let wantsTerminal = process.terminal == true || line.isSet("tty", "t")
        if wantsTerminal, line.flag("console-socket") == nil {
            throw VMFactoryError(.invalidArgument, "exec with a terminal needs --console-socket", hint: "give the socket that takes the terminal's master")
        }
        // Without --detach the relay is ours: it dies with this call.
        let (relay, said) = try await spawnHelper(
            ["exec-relay", "--process", FileStore.absolute(processFile, relativeTo: FileManager.default.currentDirectoryPath)], id: id,
            terminalSocket: wantsTerminal ? line.flag("console-socket") : nil, parentDeathSignal: detach ? 0 : SIGKILL
        )
        if said.hasPrefix("error: ") {
            _ = await relay.wait()
            // As runc's exec fails: the engine tells 127 and 126 by these words.
            throw VMFactoryError(.processFailed, "exec failed: unable to start container process: " + String(said.dropFirst(7)).trimmingCharacters(in: .newlines))
        }
        if let pidFile = line.flag("pid-file") {
            try FileStore.writeAtomically("\(relay.pid)", to: FileStore.absolute(pidFile, relativeTo: FileManager.default.currentDirectoryPath))
        }
        if detach { return 0 }
        return switch await relay.wait() {
        case .exited(let code): code
        case .signaled(let signal): 128 + signal
        }
    }

    static func loadProcess(_ path: String) throws -> OCIConfig.Process {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw VMFactoryError(.notFound, "no process file at \(path)", hint: "give --process the OCI process JSON")
        }
        do {
            let process = try JSONDecoder().decode(OCIConfig.Process.self, from: data)
            guard process.args?.first?.isEmpty == false else {
                throw VMFactoryError(.invalidArgument, "\(path) names no program (args is empty)", hint: "give the process its arguments")
            }
            return process
        } catch let error as DecodingError {
            throw VMFactoryError(.invalidArgument, "\(path) is not an OCI process: \(OCIConfig.describe(error))", hint: "check the file with `jq . \(path)`")
        }
    }

    /// The relay's side: the exec through the run's control socket, "started" on the report
    /// pipe, the process's status as ours.
    func execRelay() async -> Int32 {
        signal(SIGPIPE, SIG_IGN)
        let report = ReportPipe(fd: Int32(line.flag("report-fd") ?? "") ?? -1)
        do {
            let id = try line.containerID()
            let process = try Self.loadProcess(line.flag("process") ?? "")
            let terminal = line.isSet("terminal")
            if terminal { _ = ioctl(STDIN_FILENO, UInt(TIOCSCTTY), 0) }
            let entry = try runEntry(try loadState(id))
            var exec = RunClient.Exec(argv: process.args ?? [])
            exec.environment = (process.env ?? []).filter { $0.contains("=") }
            exec.user = "\(process.user.uid):\(process.user.gid)"
            exec.workdir = process.cwd.isEmpty ? "/" : process.cwd
            exec.privileges = BundleRun.privileges(process, log: log)
            exec.tty = terminal
            exec.interactive = terminal || ReportPipe.stdinIsStream
            if terminal { exec.windowSize = RawTerminal.size(of: STDIN_FILENO) }
            exec.onStarted = { report.say("started\n") }
            exec.onStartFailure = { _, message in report.say("error: " + message) }
            let signals = terminal ? SignalForwarding(signals: [SIGWINCH]) : nil
            defer { signals?.cancel() }
            return try RunClient.exec(entry, exec, stdout: .standardOutput, stderr: .standardError, signals: signals)
        } catch {
            let failure = VMFactoryError(error)
            report.say("error: " + failure.message)
            return 125
        }
    }
}
