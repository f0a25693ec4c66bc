import Foundation
import VMFactoryCore
import VMFactoryLifecycle

/// A run's life, from its preparation to QEMU's exit, as a state machine. Every event, whatever
/// its source, comes here: the init's frames (hello, started, exit, error, a broken frame),
/// the host (a signal, a stop, kill or rm -f from the control socket, the timeout, the
/// cancellation of vmfactory's task), QEMU (its exit, an accelerator failure) and the
/// machine's own timers (a stop's grace period, the drain after the command's exit).
///
/// `handle` is pure: it moves the state and returns what the session is to do (send a frame,
/// start a timer, end the VM). The session carries the actions out and feeds back what
/// happens; `outcome` is the exit status, decided by `RunVerdict` from what was recorded.
struct RunStateMachine: Sendable {
    enum Phase: String, Sendable, Equatable {
        /// The run's folder, overlay, daemons and descriptors are being made; no QEMU yet.
        case preparing
        /// QEMU runs; the init has not said that the command started.
        case booting
        /// The command runs.
        case running
        /// The command got its stop signal, or it ended, or vmfactory is ending the VM: the
        /// VM is on its way out.
        case stopping
        /// QEMU has exited.
        case exited
    }

    /// Why vmfactory, not the guest, ended the VM.
    enum Ending: Sendable, Equatable {
        case timedOut
        /// vmfactory's own task was cancelled (in-process callers).
        case interrupted
        /// The command did not stop within the grace period after a stop.
        case stopKilled
        /// QEMU said that its accelerator stopped the guest for good (QEMU's line).
        case acceleratorFailed(String)
        /// `vmfactory rm -f`: the VM was ended on request.
        case removed
    }

    enum Event: Sendable, Equatable {
        /// QEMU was spawned.
        case spawned
        /// The init's hello, with the version it said (nil: none it could say).
        case hello(UInt32?)
        /// `start` (the OCI runtime's): the held settings may go.
        case start
        /// The template asked for by `saveTemplate` was saved, or could not be: the run goes on.
        case templateSaved
        /// The init read the settings (before it did anything with them).
        case settingsTaken
        /// The init started the command.
        case started
        /// The init's report of the command's exit.
        case exited(RunProtocol.ExitReport)
        /// The init could not start the command (its error frame).
        case guestFailed(code: Int32, message: String)
        /// The guest broke the protocol (a malformed or oversized frame, output beyond its
        /// room): the message says how.
        case protocolBroken(String)
        /// A signal to vmfactory (foreground) or to the run's supervisor.
        case signal(Int32)
        /// `vmfactory stop -t N`.
        case stop(grace: Duration)
        /// `vmfactory kill -s N`.
        case kill(Int32)
        /// `vmfactory rm -f`.
        case remove
        case stopGraceOver
        case timedOut
        case cancelled
        case acceleratorFailed(String)
        /// The command exited a while ago and the VM is still there.
        case drainOver(Ending)
        /// QEMU exited.
        case vmExited(CommandResult.Termination)
    }

    enum Action: Sendable, Equatable {
        /// The run's settings to the init.
        case sendSettings
        /// Pause the VM, save it as the template of its machine, resume it; then
        /// `templateSaved`. The settings wait: the template holds no run's.
        case saveTemplate
        /// The VM is up and waits for `start` (the OCI runtime's `create` returns).
        case reportBooted
        /// The command has started: say so (record, the waiting parent, stdin).
        case reportStarted
        /// Signal N to the command.
        case sendSignal(Int32)
        /// The terminal's size to the command's pseudo-terminal.
        case sendWindowSize
        /// `stopGraceOver` after this long.
        case startStopTimer(Duration)
        /// `drainOver(ending)` after this long.
        case startDrainTimer(Ending, Duration)
        /// End QEMU now.
        case endVM
        /// A line for the user's stderr (after "vmfactory: ").
        case say(String)
    }

    /// How long a guest that reported its command's exit has to end the machine before a
    /// timeout or a stop ends it anyway.
    static let drainAfterExit: Duration = .seconds(5)

    /// The version of the run protocol this side speaks.
    let version: UInt32
    /// Between the stop signal and the end of the VM.
    let stopGrace: Duration
    /// Whether the command has a pseudo-terminal (window sizes go to it).
    let tty: Bool
    /// The OCI runtime's create: the VM boots, and the settings (so the command) wait for
    /// `start`.
    let waitsForStart: Bool
    /// The run makes its machine's template when the init says hello.
    let makesTemplate: Bool

    private(set) var phase: Phase = .preparing
    private(set) var ending: Ending?
    private(set) var exit: RunProtocol.ExitReport?
    private(set) var failure: RunVerdict.Failure?
    private(set) var started = false
    private(set) var termination: CommandResult.Termination?
    private var helloed = false
    private var startAsked = false
    private var settingsSent = false
    /// The template is being saved: nothing goes to the init until it is.
    private var saving = false
    private var templateHandled = false

    /// Whether the template is being saved now.
    var savingTemplate: Bool { saving }
    /// Whether the init said it read the settings.
    private(set) var settingsArrived = false
    /// SIGINT and SIGTERM so far: the second ends the VM at once.
    private var stops = 0
    private var draining = false

    init(version: UInt32 = RunProtocol.version, stopGrace: Duration, tty: Bool, waitsForStart: Bool = false, makesTemplate: Bool = false) {
        self.makesTemplate = makesTemplate
        self.version = version
        self.stopGrace = stopGrace
        self.tty = tty
        self.waitsForStart = waitsForStart
    }

    mutating func handle(_ event: Event) -> [Action] {
        if phase == .exited { return [] }
        switch event {
        case .spawned:
            if phase == .preparing { phase = .booting }
            return []
        case .hello(let said):
            // Once: a guest that says it again gets nothing more.
            guard !helloed else { return [] }
            helloed = true
            guard let said else { return fail("the guest's hello says no version; the VM was ended") }
            guard said == version else {
                return fail(
                    "the initrd speaks run protocol version \(said), and this vmfactory speaks version \(version); build the kernel and initrd with this vmfactory (vmfactory build --recipe container), or use the vmfactory that made them"
                )
            }
            if makesTemplate && !templateHandled {
                saving = true
                return [.saveTemplate]
            }
            return afterHello()
        case .settingsTaken:
            settingsArrived = true
            return []
        case .templateSaved:
            guard saving else { return [] }
            saving = false
            templateHandled = true
            // A stop or a failure while it was saved: the VM is on its way out.
            guard failure == nil, phase == .booting else { return [] }
            return afterHello()
        case .start:
            startAsked = true
            guard helloed, !saving, !settingsSent, failure == nil, phase == .booting else { return [] }
            settingsSent = true
            return [.sendSettings]
        case .started:
            // Once: a guest that says it again changes nothing.
            guard !started else { return [] }
            started = true
            if phase == .booting { phase = .running }
            return [.reportStarted]
        case .exited(let report):
            if exit == nil { exit = report }
            phase = .stopping
            return []
        case .guestFailed(let code, let message):
            if failure == nil { failure = RunVerdict.Failure(code: code, message: message) }
            phase = .stopping
            return []
        case .protocolBroken(let message):
            return fail(message)
        case .signal(let number):
            switch number {
            case SIGINT, SIGTERM:
                stops += 1
                guard stops == 1 else { return end(.stopKilled, evenAfterExit: true) }
                let said = "stopping: the command got its stop signal; the VM ends in \(Elapsed.format(stopGrace)) unless it exits first (again to end it now)"
                return [.say(said)] + stop(grace: stopGrace)
            case SIGWINCH:
                return tty ? [.sendWindowSize] : []
            default:
                return [.sendSignal(number)]
            }
        case .stop(let grace):
            return stop(grace: grace)
        case .kill(let number):
            return [.sendSignal(number)]
        case .remove:
            return end(.removed, evenAfterExit: true)
        case .stopGraceOver:
            return end(.stopKilled)
        case .timedOut:
            return end(.timedOut)
        case .cancelled:
            return end(.interrupted)
        case .acceleratorFailed(let said):
            return end(.acceleratorFailed(said))
        case .drainOver(let reason):
            if ending == nil { ending = reason }
            return [.endVM]
        case .vmExited(let how):
            termination = how
            phase = .exited
            return []
        }
    }

    /// What follows the hello: the settings, or for the OCI runtime's create the report that
    /// the VM waits for `start`.
    private mutating func afterHello() -> [Action] {
        if waitsForStart && !startAsked { return [.reportBooted] }
        settingsSent = true
        return [.sendSettings]
    }

    /// The command's stop signal (the init turns SIGTERM into the image's StopSignal), and the
    /// end of the VM after `grace` unless it ended first. The timer first: a guest that
    /// stopped reading holds back the frame, never the end of the VM.
    private mutating func stop(grace: Duration) -> [Action] {
        // A VM that waits for `start` has no process to stop: it ends now.
        if waitsForStart && !settingsSent { return end(.interrupted) }
        if phase == .booting || phase == .running { phase = .stopping }
        return [.startStopTimer(grace), .sendSignal(SIGTERM)]
    }

    /// The guest failed the run: its message wins over how QEMU ended.
    private mutating func fail(_ message: String) -> [Action] {
        if failure == nil { failure = RunVerdict.Failure(code: 125, message: message) }
        phase = .stopping
        return [.endVM]
    }

    /// Ends the VM for `reason`, unless something ended it first. Once the command has ended,
    /// the machine ends by itself as soon as its last output is here: a timeout or a grace
    /// period ending then would cut that off, so the VM gets `drainAfterExit` first (a guest
    /// that reported an exit and never ends is ended all the same).
    private mutating func end(_ reason: Ending, evenAfterExit: Bool = false) -> [Action] {
        guard ending == nil else { return [] }
        if exit != nil && !evenAfterExit {
            guard !draining else { return [] }
            draining = true
            return [.startDrainTimer(reason, Self.drainAfterExit)]
        }
        ending = reason
        phase = .stopping
        return [.endVM]
    }

    /// What happened, for `RunVerdict`.
    var events: RunVerdict.Events {
        RunVerdict.Events(
            ending: ending, exit: exit, failure: failure, started: started, connected: phase != .preparing,
            termination: termination ?? .signaled(SIGKILL)
        )
    }
}
