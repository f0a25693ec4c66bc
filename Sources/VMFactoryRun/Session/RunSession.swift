import Foundation
import Synchronization
import VMFactoryArchive
import VMFactoryBoot
import VMFactoryCore
import VMFactoryLifecycle
import VMFactoryImage

/// How a run ended, as `vmfactory run`'s exit status says it.
public struct RunOutcome: Sendable {
    /// 0-255 from the command; 128+N for a signal; 124 timeout; 125 vmfactory or the guest
    /// failed before the command ran; 126 cannot invoke; 127 not found; 137 killed after the
    /// stop's grace period.
    public var exitCode: Int32
    /// Said on stderr when vmfactory, not the command, decided the status.
    public var message: String?
    /// The run's folder, when --keep kept it.
    public var keptFolder: String?
}

/// Runs one plan: the run's folder, the disk overlay, the channel, virtiofsd, passt, QEMU; streams the command's I/O; forwards signals; ends it all.
public struct RunSession: Sendable {
    public var plan: RunPlan
    public var folders: RunFolders
    public var console: Console
    /// What QEMU's and virtiofsd's environment is made from.
    public var baseEnvironment: [String: String]
    public var stdout: TextOutput
    public var stderr: TextOutput
    /// `--timeout`: the VM is ended after this long (exit 124).
    public var timeout: Duration?
    /// Between the stop signal and the end of the VM.
    public var stopGrace: Duration = .seconds(10)
    /// `--console`: the kernel console on stderr as well as in the log.
    public var showConsole = false
    public var keep = false
    /// Signals to vmfactory, from before the session starts (see `SignalForwarding`); nil
    /// when the caller handles none (in-process callers).
    public var signals: SignalForwarding?
    /// The `-p` ports' `[::1]` listeners, relayed to QEMU's forwards while QEMU runs.
    public var relay: LoopbackRelay?

    /// The run's id (`RunFolders.newID`).
    public var id: String
    /// What the run's record says of it beside what the session knows: the image, the name,
    /// the command as given, the ports. The session fills in the rest and keeps it current.
    public var record: RunRecord?
    /// `run -d`: the folder (record, log, overlay) stays after the end, until `rm`.
    public var detached = false
    /// Called once the command has started (a detached run's parent is waiting for it).
    public var onStarted: (@Sendable () -> Void)?
    /// The OCI runtime's create: the VM boots, then waits for `start` on the control socket
    /// before the command's settings go; `onBooted` says when it is waiting.
    public var waitForStart = false
    public var onBooted: (@Sendable () -> Void)?
    /// Where the run starts from a template of its machine, or makes one (docs/run.md);
    /// nil: it boots cold (`--no-snapshot`).
    public var templates: RunTemplates?

    public init(id: String, plan: RunPlan, folders: RunFolders, console: Console, baseEnvironment: [String: String], stdout: TextOutput, stderr: TextOutput) {
        self.id = id
        self.plan = plan
        self.folders = folders
        self.console = console
        self.baseEnvironment = baseEnvironment
        self.stdout = stdout
        self.stderr = stderr
    }

    /// The runs beside this one (for its name).
    public var registry: RunRegistry { RunRegistry(folders: folders) }

    public func run() async throws -> RunOutcome {
        let folder = try await folders.create(id: id)
        var keptFolder: String?
        defer { if !keep && !detached { folder.remove() } }
        if detached { try folder.markDetached() }
        let files = RunPlan.Files(overlay: folder.path + "/disk.qcow2", sockets: folder.sockets)
        let records = record.map { RecordKeeper(record: $0, session: self, folder: folder) }
        do {
            try records?.write()
            let started = ContinuousClock.now
            var diskSize: UInt64?
            if let disk = plan.root.disk {
                diskSize = try Qcow2Overlay.create(backing: disk, at: files.overlay)
                console.debug(String(format: "run: the overlay took %.3f s", (ContinuousClock.now - started).seconds))
            }
            let outcome: (exitCode: Int32, message: String?)
            do {
                outcome = try await boot(files, folder: folder, records: records, diskSize: diskSize, restoring: true)
            } catch let failure as TemplateFailure {
                // Nothing of the guest ran: the same overlay, a cold boot, a new template.
                if failure.templateRefused {
                    console.warning("the template \(failure.key.short) did not load (\(failure.message)); booting cold and making it again")
                    templates?.discard(failure.key)
                } else {
                    console.warning("QEMU did not start from the template \(failure.key.short) (\(failure.message)); booting cold")
                }
                outcome = try await boot(files, folder: folder, records: records, diskSize: diskSize, restoring: false)
            }
            try records?.ended(code: outcome.exitCode, message: outcome.message)
            if keep {
                try folder.markKept()
                keptFolder = folder.path
            }
            return RunOutcome(exitCode: outcome.exitCode, message: outcome.message, keptFolder: keptFolder)
        } catch {
            let failure = VMFactoryError(error)
            try? records?.ended(code: failure.code == .interrupted ? 130 : 125, message: failure.description)
            throw error
        }
    }

    /// Starts virtiofsd for a folder root and each virtio-fs volume, waits for its socket and
    /// connects to it for QEMU.
    func startVirtiofsd(_ files: RunPlan.Files, folder: RunFolders.Folder, descriptors: VMMDescriptors) async throws -> [ChildProcess] {
        var daemons: [ChildProcess] = []
        var shares: [(index: Int?, command: Command, socket: String, what: String, hint: String)] = []
        if let command = plan.rootVirtiofsd(files: files), let root = plan.root.folder {
            shares.append((nil, command, files.rootSocket, "the root \(root)", "virtiofsd (QEMU 7.2's) needs root rights"))
        }
        for (index, volume) in plan.volumes.enumerated() where volume.kind == .virtiofs {
            shares.append((index, plan.virtiofsd(index, files: files), files.virtiofsSocket(index), "the volume \(volume.host):\(volume.guest)", "virtiofsd (QEMU 7.2's) needs root rights; use a 9p volume (-v HOST:GUEST) otherwise"))
        }
        do {
            daemons += try await startProxyHelpers(folder: folder, descriptors: descriptors)
            for share in shares {
                let logPath = folder.path + "/virtiofsd-\(share.index.map(String.init) ?? "root").log"
                let log = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
                defer { if log >= 0 { close(log) } }
                let daemon = try await ChildProcess.spawn(share.command, environment: share.command.environment(on: baseEnvironment), stdout: .null, stderr: log >= 0 ? .descriptor(log) : .null)
                daemons.append(daemon)
                let deadline = ContinuousClock.now + .seconds(10)
                while !FileStore.exists(share.socket) {
                    if daemon.hasExited || ContinuousClock.now > deadline {
                        let said = (try? FileStore.readText(logPath)) ?? ""
                        throw VMFactoryError(
                            .processFailed, "virtiofsd did not start for \(share.what)", hint: share.hint,
                            details: said.split(separator: "\n").suffix(10).map { "| " + $0 }
                        )
                    }
                    try await Task.sleep(for: .milliseconds(5))
                }
                // The socket file appears at bind(); connections are refused until listen().
                while true {
                    do {
                        try descriptors.connectVirtiofs(share.index, socket: share.socket)
                        break
                    } catch {
                        if daemon.hasExited || ContinuousClock.now > deadline { throw error }
                        try await Task.sleep(for: .milliseconds(5))
                    }
                }
            }
        } catch {
            for daemon in daemons { daemon.terminate(grace: .milliseconds(200)) }
            throw error
        }
        return daemons
    }

    /// virtfs-proxy-helper for a folder root over 9p and for each proxied 9p volume, each on its
    /// end of a socket pair (QEMU has the other).
    func startProxyHelpers(folder: RunFolders.Folder, descriptors: VMMDescriptors) async throws -> [ChildProcess] {
        var shares: [(index: Int?, host: String)] = []
        if let root = plan.root.folder, plan.rootShare == .ninep { shares.append((nil, root)) }
        for (index, volume) in plan.volumes.enumerated() where volume.kind == .ninepProxy { shares.append((index, volume.host)) }
        var helpers: [ChildProcess] = []
        do {
            for share in shares {
                let fd = try descriptors.makeProxyPair(volume: share.index)
                let command = RunPlan.proxyHelper(folder: share.host, fd: fd)
                let log = open(folder.path + "/virtfs-proxy-helper-\(share.index.map(String.init) ?? "root").log", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
                defer { if log >= 0 { close(log) } }
                helpers.append(try await ChildProcess.spawn(command, environment: command.environment(on: baseEnvironment), stdout: .null, stderr: log >= 0 ? .descriptor(log) : .null, keeping: [fd]))
            }
        } catch let error as VMFactoryError where error.code == .missingTool {
            for helper in helpers { helper.terminate(grace: .milliseconds(200)) }
            throw VMFactoryError(.missingTool, "virtfs-proxy-helper, which shares folders with a guest of the other byte order, is not installed", hint: "install qemu-system-common (apt-get install qemu-system-common)")
        } catch {
            for helper in helpers { helper.terminate(grace: .milliseconds(200)) }
            throw error
        }
        return helpers
    }

    /// passt for the `user` and `host-loopback` networks, on its end of the socket pair.
    func startPasst(_ files: RunPlan.Files, folder: RunFolders.Folder, descriptors: VMMDescriptors) async throws -> ChildProcess? {
        guard let fd = descriptors.passt, let command = plan.passt(files, fd: fd, log: folder.path + "/passt.log") else { return nil }
        let log = open(folder.path + "/passt.stderr", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        defer { if log >= 0 { close(log) } }
        do {
            return try await ChildProcess.spawn(
                command, environment: command.environment(on: baseEnvironment), stdout: .null, stderr: log >= 0 ? .descriptor(log) : .null,
                newSession: true, keeping: [fd]
            )
        } catch let error as VMFactoryError where error.code == .missingTool {
            throw VMFactoryError(
                .missingTool, "passt, which gives the guest its network, is not installed",
                hint: "install it (apt-get install passt), or run with --network restricted (only -p ports) or --network none"
            )
        }
    }

    /// The most of the guest's console that a run's console.log keeps.
    static let consoleLogLimit = 16 << 20

    /// How the VM starts.
    enum Start {
        /// From its first instruction.
        case cold
        /// From its first instruction, saved as a template when the init says hello.
        case making(RunTemplates.Maker)
        /// From a template (its state open on the descriptor): QEMU loads it, and the init
        /// waits for the settings.
        case restoring(RunTemplates.Template, RunTemplates.Key, Int32)
    }

    /// A restore that did not get the VM running; nothing of the guest ran.
    struct TemplateFailure: Error {
        var key: RunTemplates.Key
        var message: String
        /// QEMU refused the template itself (the run boots cold and makes it again); otherwise
        /// QEMU failed for another reason, which the cold boot meets again and reports.
        var templateRefused: Bool
    }

    /// How this run's machine starts: from its template if there is a sound one (and
    /// `restoring`), else cold, making the template unless another run is making it.
    func start(for command: Command, diskSize: UInt64?, restoring: Bool) -> Start {
        guard let templates else { return .cold }
        if let why = RunTemplates.ineligibility(of: plan) {
            console.debug("run: boots cold: " + why)
            return .cold
        }
        guard let key = RunTemplates.key(plan: plan, command: command, diskSize: diskSize, environment: baseEnvironment) else { return .cold }
        if restoring, let (template, state) = templates.find(key, console: console) { return .restoring(template, key, state) }
        do {
            guard let maker = try templates.startMaking(key) else {
                console.debug("run: another run is making the template \(key.short); this one boots cold")
                return .cold
            }
            return .making(maker)
        } catch {
            console.warning("cannot make a template for this machine (\(VMFactoryError(error).description)); booting cold")
            return .cold
        }
    }

    /// Pauses the VM, saves it into the template being made, resumes it. A failure to save
    /// costs the template, never the run; nil unless QEMU could not resume the VM (then the
    /// run cannot go on: QEMU's words).
    static func save(_ maker: RunTemplates.Maker, monitor: QEMUMonitor, plan: RunPlan, diskSize: UInt64?, console: Console, patience: Duration = .seconds(60)) -> String? {
        let began = ContinuousClock.now
        // QEMU 7.2's s390x interrupt controller under TCG does not migrate the interrupts it
        // holds pending, and a VM restored without one may wait for it for ever (the adapter's
        // summary indicator, in guest memory, says it is on its way). The hello's own completion
        // is such an interrupt: the guest gets time to take it, idle in its wait for the
        // settings, before it is paused.
        if plan.target == .s390x { usleep(Self.s390xSettle) }
        var failure = monitor.execute("stop")
        // QEMU's default bandwidth for a migration is 128 MiB/s: a file takes it faster.
        if failure == nil { failure = monitor.execute("migrate-set-parameters", arguments: ["max-bandwidth": Int64(1) << 40]) }
        if failure == nil { failure = monitor.execute("getfd", arguments: ["fdname": "template"], passing: maker.state) }
        if failure == nil { failure = monitor.execute("migrate", arguments: ["uri": "fd:template"]) }
        while failure == nil {
            switch monitor.query("query-migrate") {
            case .failure(let refusal):
                failure = refusal.message
            case .success(let answer):
                let status = answer["status"] as? String ?? "none"
                if status == "completed" { break }
                if ["failed", "cancelled"].contains(status) { failure = answer["error-desc"] as? String ?? "the migration \(status)" }
                if failure == nil, ContinuousClock.now - began > patience {
                    // A template folder that stopped taking writes (a hung file system).
                    _ = monitor.execute("migrate_cancel")
                    failure = "the state was not written within \(Elapsed.format(patience))"
                }
                usleep(2000)
                continue
            }
            break
        }
        // After a migration QEMU has let go of the disk; `cont` takes it back.
        let resumed = monitor.execute("cont")
        let seconds = (ContinuousClock.now - began).seconds
        if let failure {
            maker.abandon()
            console.warning("could not save this machine as a template (QEMU: \(failure)); the run goes on, and the next one boots cold again")
        } else {
            do {
                let size = ByteCount.format(FileStore.fileSize(maker.statePath) ?? 0)
                if try maker.commit(plan: plan, diskSize: diskSize, protocolVersion: RunProtocol.version, saveSeconds: seconds) {
                    console.debug(String(format: "run: saved the template %@ (%@) in %.3f s", maker.key.short, size, seconds))
                    for stale in maker.templates.pruneStale() {
                        console.debug("run: removed the template \(stale.prefix(12)), whose QEMU, kernel or initrd changed since")
                    }
                }
            } catch {
                console.warning("could not keep the template: \(VMFactoryError(error).description)")
            }
        }
        return resumed.map { "QEMU did not resume the VM after saving it as a template: \($0)" }
    }

    /// How long a restored VM has to say that it read its settings.
    static let restorePatience: Duration = .seconds(60)

    /// Microseconds an s390x VM runs after its hello before it is saved (see `save`).
    static let s390xSettle: UInt32 = 100_000

    /// Waits until QEMU has loaded the template, then starts the VM. nil when it runs; else
    /// why not.
    static func resume(_ monitor: QEMUMonitor, template: RunTemplates.Record, diskSize: UInt64?, patience: Duration = .seconds(120)) -> String? {
        let deadline = ContinuousClock.now + patience
        while true {
            switch monitor.query("query-status") {
            case .failure(let refusal):
                return refusal.message
            case .success(let answer):
                switch answer["status"] as? String ?? "" {
                case "inmigrate":
                    if ContinuousClock.now > deadline { return "QEMU did not load it within \(Elapsed.format(patience))" }
                    usleep(1000)
                case let status where ["running", "paused", "postmigrate", "prelaunch"].contains(status):
                    // The template's kernel knows the template's disk size: the device says
                    // that it changed (the init waits for the run's size before it mounts).
                    if let diskSize, diskSize != template.diskSize, let failure = monitor.execute("block_resize", arguments: ["device": "root", "size": diskSize]) {
                        return "QEMU did not give the disk its size: \(failure)"
                    }
                    // It was saved paused, and so comes back.
                    return status == "running" ? nil : monitor.execute("cont")
                case let other:
                    return "QEMU's VM is \(other) after loading it"
                }
            }
        }
    }

    /// Boots, streams and ends the VM; decides the exit status. Throws `TemplateFailure` when
    /// a template did not load.
    func boot(_ files: RunPlan.Files, folder: RunFolders.Folder, records: RecordKeeper?, diskSize: UInt64?, restoring: Bool) async throws -> (exitCode: Int32, message: String?) {
        if let identity = plan.vmmIdentity {
            for volume in plan.volumes where volume.kind == .ninep {
                try await VMMDescriptors.checkAccess(volume, identity: identity, environment: baseEnvironment)
            }
        }
        let descriptors = try VMMDescriptors(plan: plan, files: files, identity: plan.vmmIdentity)
        var channelsOwnChannel = false
        defer { descriptors.closeAll(keepingChannel: channelsOwnChannel) }
        let daemons = try await startVirtiofsd(files, folder: folder, descriptors: descriptors)
        defer { for daemon in daemons { daemon.terminate(grace: .milliseconds(500)) } }
        if let namespace = plan.namespaceNetwork {
            descriptors.takeTap(try await namespace.attach(runner: LocalProcessRunner(hostEnvironment: baseEnvironment)))
        }
        let passt = try await startPasst(files, folder: folder, descriptors: descriptors)
        defer { passt?.terminate(grace: .milliseconds(200)) }
        let policy: FrameFilter.Policy = switch plan.network {
        case .restricted: .nothing
        case .hostLoopback: .everything
        default: .world
        }
        let udpPorts = Set(plan.ports.filter { $0.proto == .udp }.map { UInt16($0.guestPort) })
        let filter = descriptors.takeFilterEnds().map {
            FrameFilter(guest: $0.guest, passt: $0.passt, policy: policy, gateway: RunPlan.gateway, guestAddress: RunPlan.guestAddress, udpPorts: udpPorts)
        }
        filter?.start()
        defer {
            filter?.stop()
            if let dropped = filter?.droppedFrames, dropped > 0 {
                console.info("run: the network filter dropped \(dropped) frame(s) of the guest's (to the host's loopback, or not allowed by --network \(plan.network.rawValue))")
            }
        }
        var files = files
        files.inherited = descriptors.inherited

        var command = plan.qemu(files)
        let start = start(for: command, diskSize: diskSize, restoring: restoring)
        var keeping = descriptors.inherited.all
        var stateFD: Int32 = -1
        defer { if stateFD >= 0 { close(stateFD) } }
        if case .restoring(_, _, let state) = start {
            stateFD = state
            // QEMU announces a migrated NIC with RARP frames of its own: no switch here needs them.
            command.arguments += ["-global", "migration.announce-rounds=0", "-incoming", "fd:\(stateFD)"]
            keeping.append(stateFD)
        }
        // A maker that never got to save (QEMU failed, the run was stopped first) gives up.
        defer { if case .making(let maker) = start { maker.abandon() } }
        try FileStore.writeAtomically(command.description + "\n", to: folder.path + "/qemu.sh")
        let consoleLog = open(folder.path + "/console.log", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        defer { if consoleLog >= 0 { close(consoleLog) } }
        let spawned = ContinuousClock.now
        let qemu = try await ChildProcess.spawn(
            command, environment: command.environment(on: baseEnvironment), stdin: .null, stdout: .pipe, stderr: .pipe,
            // A session of its own: no controlling terminal to type into (TIOCSTI) or write to.
            newSession: true, identity: plan.vmmIdentity, keeping: keeping
        )
        descriptors.closeChildEnds()
        // QEMU has its own copy: a template removed meanwhile frees its room.
        if stateFD >= 0 {
            close(stateFD)
            stateFD = -1
        }
        let monitor = QEMUMonitor(fd: descriptors.monitor)
        var restoredVersion: UInt32?
        if case .restoring(let template, let key, _) = start {
            if let failure = await Self.onThread({ Self.resume(monitor, template: template.record, diskSize: diskSize) }) {
                qemu.terminate(grace: .milliseconds(200))
                _ = await qemu.wait()
                let said = String(decoding: await PipeReader.readAll(qemu.stderr!, limit: 1 << 16), as: UTF8.self)
                let last = said.split(separator: "\n").last.map(String.init)
                // The cold boot's passt takes the same -p ports: this one first lets go of them.
                passt?.terminate(grace: .milliseconds(200))
                _ = await passt?.wait()
                // QEMU's words when the stream is what it refused ("load of migration failed",
                // an unknown RAM block or section); anything else is not the template's fault.
                let refused = ["migration", "ramblock", "section", "incoming"].contains { said.lowercased().contains($0) }
                throw TemplateFailure(key: key, message: last.map { "QEMU: " + $0 } ?? failure, templateRefused: refused)
            }
            restoredVersion = template.record.protocolVersion
            console.debug(String(format: "run: started from the template %@ in %.3f s", key.short, (ContinuousClock.now - spawned).seconds))
        }
        // passt ends by itself once QEMU is gone; before that, its end is the network's.
        let passtWatch = passt.map { passt in
            Task.detached { [stderr] in
                let status: String = switch await passt.wait() {
                case .exited(let code): "status \(code)"
                case .signaled(let signal): "signal \(signal)"
                }
                try? await Task.sleep(for: .milliseconds(200))
                guard !qemu.hasExited else { return }
                stderr.writeLine("vmfactory: warning: passt ended (\(status)) while the VM runs: the guest has no network from now on; its log is \(folder.path)/passt.log")
            }
        }
        defer { passtWatch?.cancel() }
        let onStarted = onStarted
        let controlHolder = Mutex<RunControl?>(nil)
        let channels = RunChannels(
            plan: plan, qemu: qemu, channel: descriptors.channel, stdout: stdout, stderr: stderr, stopGrace: stopGrace,
            waitsForStart: waitForStart, saveTemplate: { [plan, console] () -> (@Sendable () -> String?)? in
                guard case .making(let maker) = start else { return nil }
                return { Self.save(maker, monitor: monitor, plan: plan, diskSize: diskSize, console: console) }
            }(), onBooted: onBooted
        ) {
            // The record and the caller's state first: whoever `start` answers reads them next.
            try? records?.started()
            onStarted?()
            controlHolder.withLock { $0 }?.commandStarted()
        }
        // exec, start, stop, kill, wait and rm -f reach the run here, foreground or detached.
        let control = try RunControl(path: files.controlSocket, channels: channels, process: plan.process, monitor: monitor)
        controlHolder.withLock { $0 = control }
        control.start()
        relay?.start()
        defer { relay?.stop() }
        let showConsole = showConsole
        let consoleOutput = stderr
        let logged = Atomic<Int>(0)
        let logLimit = Self.consoleLogLimit
        async let consoleDone: Void = PipeReader.readLines(qemu.stdout!) { line in
            // The guest can write its console without end: the log keeps the first part.
            let bytes = Array((line + "\n").utf8)
            let before = logged.add(bytes.count, ordering: .relaxed).oldValue
            if consoleLog >= 0, before < logLimit {
                let text = before + bytes.count <= logLimit ? bytes : Array("[vmfactory: the console log stops here, at its limit of \(logLimit >> 20) MiB]\n".utf8)
                text.withUnsafeBytes { try? FileStore.writeAll(consoleLog, $0, path: "console.log") }
            }
            if showConsole { consoleOutput.writeLine(line) }
            return true
        }
        async let qemuSaid = PipeReader.readAll(qemu.stderr!, limit: 1 << 20) { line in
            if let said = QEMUMessages.acceleratorFailure(in: line) { channels.post(.acceleratorFailed(said)) }
        }

        // -it: keys go to the guest's terminal as they are typed, Ctrl-C included.
        let raw = plan.tty && plan.interactive ? RawTerminal(fd: STDIN_FILENO) : nil
        defer { raw?.restore() }
        channels.post(.spawned)
        // A restored init said hello before it was saved, and waits for the settings.
        if let restoredVersion { channels.post(.hello(restoredVersion)) }
        channels.connect()
        channelsOwnChannel = true
        if let signals {
            channels.forwardSignals(signals)
        }
        defer { signals?.handle(nil) }
        // Some hosts' KVM runs a guest that never gets anywhere, silently: say so while waiting.
        let silence = plan.accelerator == .kvm ? Task.detached { [stderr] in
            try await Task.sleep(for: QEMUMessages.kvmSilence)
            if channels.startedAfter == nil, !qemu.hasExited { stderr.writeLine("vmfactory: warning: " + QEMUMessages.kvmSilenceNote) }
        } : nil
        defer { silence?.cancel() }
        // A restored VM that never reads its settings is stuck from its template (QEMU 7.2 loses
        // an s390x interrupt that was pending when it was saved): ended, and the run boots cold.
        // Nothing of the run happened in it: the init says it has the settings before it acts.
        let wedged = Atomic<Bool>(false)
        let watchdog = restoredVersion == nil ? nil : Task.detached {
            let deadline = ContinuousClock.now + Self.restorePatience
            while ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
                if channels.settingsTaken || qemu.hasExited { return }
            }
            wedged.store(true, ordering: .relaxed)
            qemu.terminate(grace: .milliseconds(200))
        }
        defer { watchdog?.cancel() }
        let timer = timeout.map { limit in
            Task.detached {
                try await Task.sleep(for: limit)
                channels.post(.timedOut)
            }
        }
        let termination = await withTaskCancellationHandler {
            await qemu.wait()
        } onCancel: {
            channels.post(.cancelled)
        }
        timer?.cancel()
        channels.post(.vmExited(termination))
        console.debug(String(format: "run: QEMU ran for %.3f s", (ContinuousClock.now - spawned).seconds) + (channels.startedAfter.map { String(format: "; the command started %.3f s after the spawn", ($0 - spawned).seconds) } ?? ""))
        await channels.finish()
        _ = await consoleDone
        let messages = String(decoding: await qemuSaid, as: UTF8.self)
        if wedged.load(ordering: .relaxed), !channels.settingsTaken, case .restoring(_, let key, _) = start {
            control.abandon()
            passt?.terminate(grace: .milliseconds(200))
            _ = await passt?.wait()
            throw TemplateFailure(key: key, message: "the restored VM did not read its settings within \(Elapsed.format(Self.restorePatience))", templateRefused: true)
        }
        let outcome = channels.outcome(qemuSaid: messages, consoleLog: folder.path + "/console.log", keep: keep)
        try? records?.ended(code: outcome.exitCode, message: outcome.message)
        control.finish(code: outcome.exitCode, message: outcome.message)
        return outcome
    }
}

extension RunSession {
    /// Runs blocking work (the monitor's) on a thread of its own, not the tasks' pool.
    static func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread { continuation.resume(returning: body()) }
        }
    }

    /// Makes a session with `prepare` (the image, the kernel, the plan), taking `signals` over
    /// for good: while it prepares, SIGINT or SIGTERM cancels the work (exit 130); the session
    /// it makes hands them to its state machine.
    public static func prepare(
        signals: SignalForwarding?, stderr: TextOutput, _ prepare: @escaping @Sendable () async throws -> RunSession?
    ) async throws -> RunSession? {
        let work = Task { try await prepare() }
        signals?.handle { number in
            guard number != SIGWINCH else { return }
            stderr.writeLine("vmfactory: stopping (signal \(number))…")
            work.cancel()
        }
        defer { signals?.handle(nil) }
        var session = try await withTaskCancellationHandler { try await work.value } onCancel: { work.cancel() }
        session?.signals = signals
        return session
    }
}

/// Keeps a run's record current: created, running, exited.
final class RecordKeeper: Sendable {
    private let state: Mutex<RunRecord>
    let folder: String

    init(record: RunRecord, session: RunSession, folder: RunFolders.Folder) {
        var record = record
        record.id = session.id
        record.pid = getpid()
        record.controlSocket = RunPlan.Files(overlay: "", sockets: folder.sockets).controlSocket
        record.detached = session.detached
        record.user = session.plan.process.user
        record.workdir = session.plan.process.workdir
        record.environment = session.plan.process.environment
        record.status = .created
        state = Mutex(record)
        self.folder = folder.path
    }

    func write() throws {
        try state.withLock { try $0.write(folder: folder) }
    }

    func started() throws {
        try state.withLock { record in
            record.status = .running
            record.started = Date()
            try record.write(folder: folder)
        }
    }

    /// Written once: the first end said is the one that counts.
    func ended(code: Int32, message: String?) throws {
        try state.withLock { record in
            guard record.status != .exited else { return }
            record.status = .exited
            record.exitCode = code
            record.message = message
            record.finished = Date()
            try record.write(folder: folder)
        }
    }
}
