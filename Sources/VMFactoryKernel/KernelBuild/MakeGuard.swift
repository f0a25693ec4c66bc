import Foundation
import VMFactoryArchive
import VMFactoryCore

/// Keeps a make run findable after vmfactory itself dies.
///
/// Ctrl-C and failures stop make's whole process group through the runner. A SIGKILL of
/// vmfactory cannot be caught, though, and its make would run on, writing into the build
/// directory while the next build starts there. So make's process group id is written to a
/// file in the build directory while it runs; the next build stops a group it finds there
/// (SIGTERM first, so that make deletes its half-written targets, then SIGKILL).
enum MakeGuard {
    /// Runs `command` under `sh`, which records its pid (the process group id, since the
    /// runner makes the child a group leader) and then becomes `command` itself.
    static func wrapped(_ command: Command, pidFile: String) -> Command {
        var shell = command
        shell.executable = "/bin/sh"
        shell.arguments = ["-c", "echo $$ > \"$0\" && exec \"$@\"", pidFile, command.executable] + command.arguments
        return shell
    }

    static func run(_ command: Command, pidFile: String, runner: any ProcessRunner, log: String, what: String) async throws {
        let result = try await runner.run(wrapped(command, pidFile: pidFile), output: .logFile(log))
        try? FileManager.default.removeItem(atPath: pidFile)
        // Report the make command, not the shell around it.
        guard result.succeeded else { throw result.failure(of: command, output: .logFile(log), what: what) }
    }

    /// Stops a make that an earlier, killed vmfactory left running in `buildDirectory`.
    static func stopLeftover(pidFile: String, buildDirectory: String, console: Console, patience: Duration = .seconds(30)) async {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let group = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), group > 1 else {
            try? FileManager.default.removeItem(atPath: pidFile)
            return
        }
        defer { try? FileManager.default.removeItem(atPath: pidFile) }
        guard isRunning(group), isMake(group, building: buildDirectory) else { return }
        console.note("stopping the make (process group \(group)) that an interrupted build left running in \(FileStore.displayPath(buildDirectory))")
        kill(-group, SIGTERM)
        let deadline = ContinuousClock.now + patience
        while isRunning(group), ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(100))
        }
        if isRunning(group) {
            kill(-group, SIGKILL)
            let killed = ContinuousClock.now + .seconds(5)
            while isRunning(group), ContinuousClock.now < killed {
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// Whether a process of `group` is still running. Zombies do not count: an orphan's
    /// exit status is collected by PID 1, which in some containers never does so.
    static func isRunning(_ group: pid_t) -> Bool {
        guard kill(-group, 0) == 0 else { return false }
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where entry.allSatisfy(\.isNumber) {
            guard let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            // After "pid (comm)": state, ppid, pgrp.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 2, pid_t(fields[2]) == group else { continue }
            if fields[0] != "Z" && fields[0] != "X" { return true }
        }
        return false
    }

    /// Whether `pid` still runs a make for `buildDirectory` (and not some process that has
    /// since been given the same number).
    static func isMake(_ pid: pid_t, building buildDirectory: String) -> Bool {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        let words = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        return words.contains("O=\(buildDirectory)")
    }
}
