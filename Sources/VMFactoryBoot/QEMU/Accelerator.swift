import Foundation
import VMFactoryCore
import VMFactoryKernel

/// Chooses between KVM and TCG. `auto` takes KVM only after a short probe boot has shown that
/// it works on this host (some hosts have a /dev/kvm whose guests abort or hang), and
/// remembers the answer per QEMU version, host kernel and CPU.
public struct AcceleratorProbe: Sendable {
    public enum Choice: String, Sendable, Codable, CaseIterable {
        case auto, kvm, tcg
    }

    public struct Record: Sendable, Codable, Equatable {
        public var qemu: String
        public var hostKernel: String
        public var cpu: String
        public var works: Bool
        public var reason: String
    }

    public var cacheDirectory: String
    public var console: Console
    public var runner: any ProcessRunner
    public var bootRunner: BootRunner
    /// How long the probe boot may take before KVM counts as hanging.
    public var patience: Duration

    public init(cacheDirectory: String, console: Console, runner: any ProcessRunner, bootRunner: BootRunner, patience: Duration = .seconds(8)) {
        self.cacheDirectory = cacheDirectory
        self.console = console
        self.runner = runner
        self.bootRunner = bootRunner
        self.patience = patience
    }

    var recordPath: String { cacheDirectory + "/probes/kvm.json" }

    /// The accelerator for `machine`, and a note saying why when it is not the obvious one.
    public func resolve(_ choice: Choice, machine: QEMUMachine, marker: String) async throws -> (QEMUMachine.Accelerator, String?) {
        switch choice {
        case .kvm: return (.kvm, nil)
        case .tcg: return (.tcg, nil)
        case .auto: break
        }
        guard machine.target.rawValue == Target.hostMachine else {
            return (.tcg, "\(machine.target) guests run under TCG (emulation) on this \(Target.hostMachine) host")
        }
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            return (.tcg, "KVM is not available (/dev/kvm: \(String(cString: strerror(errno)))); using TCG")
        }
        close(fd)
        let identity = try await identity(qemu: machine.target.qemuSystem)
        if let data = FileManager.default.contents(atPath: recordPath),
           let record = try? JSONDecoder().decode(Record.self, from: data),
           record.qemu == identity.qemu, record.hostKernel == identity.hostKernel, record.cpu == identity.cpu {
            return record.works ? (.kvm, nil) : (.tcg, "KVM did not boot a guest on this host (\(record.reason)); using TCG. Probed once and remembered in \(recordPath)")
        }

        console.info("probing KVM with a short boot (at most \(Int(patience.seconds)) s, once)…")
        var probe = machine
        probe.accelerator = .kvm
        let works: Bool
        let reason: String
        do {
            let run = try await bootRunner.run(probe.command, timeout: patience, stop: { $0.text.contains(marker) })
            works = run.firstLine(containing: marker) != nil
            if works {
                reason = "the probe reached '\(marker)'"
            } else if run.ending == .timedOut {
                reason = "the probe guest printed nothing usable within \(Int(patience.seconds)) s"
            } else {
                let said = run.stderr.split(separator: "\n").last.map(String.init) ?? "no message"
                reason = "QEMU ended the probe: \(said)"
            }
        } catch let error as VMFactoryError where error.code == .acceleratorFailed {
            works = false
            reason = error.message
        }
        let record = Record(qemu: identity.qemu, hostKernel: identity.hostKernel, cpu: identity.cpu, works: works, reason: reason)
        try? FileStore.writeAtomically(try JSON.encode(record), to: recordPath)
        return works ? (.kvm, nil) : (.tcg, "KVM did not boot a guest on this host (\(reason)); using TCG")
    }

    /// What an earlier probe found for `target` on this host, without probing again.
    public func remembered(for target: Target) -> Bool? {
        guard target.rawValue == Target.hostMachine, let data = FileManager.default.contents(atPath: recordPath),
              let record = try? JSONDecoder().decode(Record.self, from: data) else { return nil }
        return record.works
    }

    func identity(qemu: String) async throws -> (qemu: String, hostKernel: String, cpu: String) {
        let version = try await Toolchain.firstLine(of: qemu, runner: runner)
        return (version, HostInfo.kernelRelease, HostInfo.cpuModel)
    }
}
