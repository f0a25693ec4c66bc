import Foundation
import VMFactoryBoot
import VMFactoryCore
import VMFactoryLifecycle

/// How a run ended, as its exit status and vmfactory's message: a pure function of what
/// happened (the events the channel and QEMU gave), so that every way a run can end is
/// decided in one place and tested without a VM.
enum RunVerdict {
    struct Failure: Sendable, Equatable {
        var code: Int32
        var message: String
    }

    /// What happened, in the order of precedence `decide` gives it: the guest's failure to
    /// start (or its breaking the protocol), the command's exit report, the init's exit code
    /// through isa-debug-exit, vmfactory's own ending of the VM, and last how QEMU ended.
    struct Events: Sendable {
        var ending: RunStateMachine.Ending?
        var exit: RunProtocol.ExitReport?
        var failure: Failure?
        var started: Bool
        var connected: Bool
        var termination: CommandResult.Termination
    }

    static func decide(
        _ events: Events, plan: RunPlan, stopGrace: Duration, qemuSaid: String, consoleTail: [String], consoleLog: String, keep: Bool
    ) -> (exitCode: Int32, message: String?) {
        if let failure = events.failure { return (failure.code, failure.message) }
        if let exit = events.exit {
            guard exit.oomKills > 0 else { return (exit.code, nil) }
            let who = exit.code == 137 ? "the command" : "\(exit.oomKills) process(es) of the command's"
            return (exit.code, "the guest ran out of memory and its kernel's OOM killer ended \(who) (--memory \(plan.memoryMiB)m); give the run more with --memory")
        }
        if events.ending == nil, plan.target == .x86_64, case .exited(let status) = events.termination, status > 1,
           let code = QEMUMachine.code(fromDebugExitStatus: status) {
            // No exit report from the init, but its exit code through isa-debug-exit.
            return (code, events.started ? nil : "the guest ended with status \(code) before the command started; run again with --console to see why")
        }
        switch events.ending {
        case .timedOut?:
            return (124, "the command did not finish within the --timeout; the VM was ended")
        case .stopKilled?:
            return (137, "the command did not stop within \(Elapsed.format(stopGrace)) of its stop signal; the VM was ended")
        case .interrupted?:
            return (130, "interrupted; the VM was ended")
        case .removed?:
            return (137, "removed (rm -f); the VM was ended")
        case .acceleratorFailed(let said)?:
            return (125, QEMUMessages.acceleratorError(said, stderr: qemuSaid).description)
        case nil:
            break
        }
        let status: String = switch events.termination {
        case .exited(let code): "status \(code)"
        case .signaled(let signal): "signal \(signal)"
        }
        let said = qemuSaid.split(separator: "\n").suffix(8).map { "  | " + $0 }
        let console = consoleTail.map { "  | " + $0 }
        var lines = [events.connected ? "the VM ended (QEMU \(status)) before the command finished" : "QEMU ended (\(status)) before the run's channels were connected"]
        if !said.isEmpty { lines += ["QEMU said:"] + said }
        if !console.isEmpty { lines += ["last console lines:"] + console }
        lines.append(keep ? "the console log is \(consoleLog)" : "run again with --console to see the guest's console, or --keep to keep its log")
        return (125, lines.joined(separator: "\n"))
    }
}
