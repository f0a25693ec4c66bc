import Foundation
import VMFactoryCore
import VMFactoryKernel

/// A QEMU invocation for booting a kernel and initrd, built as a value.
public struct QEMUMachine: Sendable, Hashable {
    public enum Accelerator: String, Sendable, Codable, CaseIterable {
        case kvm, tcg
    }

    /// Where the guest console goes: the ISA UART (ttyS0, x86_64), the SCLP line-mode console
    /// (ttysclp0, s390x) or a virtio console (hvc0, both).
    public enum Console: String, Sendable, Codable, CaseIterable {
        case serial, virtio, sclp

        public var device: String {
            switch self {
            case .serial: return "ttyS0"
            case .virtio: return "hvc0"
            case .sclp: return "ttysclp0"
            }
        }
    }

    public var target: Target
    public var kernel: String
    public var initrd: String?
    public var cmdline: String
    /// QEMU's `-m`: `256M`, `1G`.
    public var memory: String
    public var cpus: Int
    public var accelerator: Accelerator
    public var console: Console
    /// Deterministic virtual time under TCG: `-icount shift=0,sleep=off`.
    public var icount: Bool
    /// x86_64: QEMU's `isa-debug-exit` at 0xf4, so that the init's exit code becomes QEMU's
    /// exit status (`code << 1 | 1`).
    public var debugExit: Bool
    /// `-name`: who the QEMU is, in ps and /proc.
    public var name: String?
    /// Appended to `-M`'s value (`memory-backend=mem`).
    public var machineOptions: [String] = []
    /// Appended to `-accel`'s value (`tb-size=128`).
    public var acceleratorOptions: [String] = []
    /// After the common options, before the console: a sandbox, globals, memory objects.
    public var extra: [String] = []

    public init(
        target: Target, kernel: String, initrd: String? = nil, cmdline: String, memory: String = "256M", cpus: Int = 1,
        accelerator: Accelerator = .tcg, console: Console? = nil, icount: Bool = false, debugExit: Bool = true
    ) {
        self.target = target
        self.kernel = kernel
        self.initrd = initrd
        self.cmdline = cmdline
        self.memory = memory
        self.cpus = cpus
        self.accelerator = accelerator
        self.console = console ?? Self.defaultConsole(target)
        self.icount = icount
        self.debugExit = debugExit
    }

    public static func defaultConsole(_ target: Target) -> Console {
        target == .s390x ? .sclp : .serial
    }

    /// The console a kernel command line names last (`console=ttyS0`, `console=hvc0`), among
    /// those the target's machine has.
    public static func console(fromCmdline cmdline: String, target: Target) -> Console {
        let named = cmdline.split(separator: " ").filter { $0.hasPrefix("console=") }.last.map { String($0.dropFirst("console=".count)) }
        let device = named?.split(separator: ",").first.map(String.init)
        let available: [Console] = target == .s390x ? [.sclp, .virtio] : [.serial, .virtio]
        return available.first { $0.device == device } ?? defaultConsole(target)
    }

    public static let debugExitPort = 0xf4

    /// QEMU's exit status for an init's `code` written to isa-debug-exit, and back.
    public static func debugExitStatus(forCode code: Int32) -> Int32 { (code << 1) | 1 }
    public static func code(fromDebugExitStatus status: Int32) -> Int32? { status & 1 == 1 ? status >> 1 : nil }

    public var arguments: [String] {
        // In QEMU's option syntax a comma is written twice.
        var arguments = name.map { ["-name", $0.replacingOccurrences(of: ",", with: ",,")] } ?? []
        let machine: String
        switch target {
        case .x86_64:
            // microvm: no PCI, no firmware tables, no option ROMs. rtc=on avoids a one-second
            // wait in the kernel's clock setup; acpi=off leaves virtio-mmio devices on the
            // command line, which QEMU adds itself.
            machine = "microvm,x-option-roms=off,rtc=on,acpi=off,pit=on,pic=on,isa-serial=\(console == .serial ? "on" : "off")"
        case .s390x:
            machine = "s390-ccw-virtio"
        }
        arguments += ["-M", ([machine] + machineOptions).joined(separator: ",")]
        arguments += ["-accel", ([accelerator.rawValue] + acceleratorOptions).joined(separator: ",")]
        if icount {
            arguments += ["-icount", "shift=0,sleep=off"]
        }
        if accelerator == .kvm {
            arguments += ["-cpu", "host"]
        } else if target == .x86_64 {
            arguments += ["-cpu", "max"]
        }
        arguments += [
            "-m", memory, "-smp", String(cpus),
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        ]
        arguments += extra
        switch console {
        case .serial:
            arguments += ["-serial", "stdio"]
        case .virtio:
            // virtio over MMIO on microvm, over channel I/O on s390-ccw-virtio.
            let bus = target == .s390x ? "virtio-serial-ccw" : "virtio-serial-device"
            arguments += ["-chardev", "stdio,id=console", "-device", bus, "-device", "virtconsole,chardev=console"]
        case .sclp:
            arguments += ["-chardev", "stdio,id=console", "-device", "sclpconsole,chardev=console"]
        }
        arguments += ["-kernel", kernel]
        if let initrd { arguments += ["-initrd", initrd] }
        arguments += ["-append", cmdline]
        if debugExit, target == .x86_64 {
            arguments += ["-device", "isa-debug-exit,iobase=0x\(String(Self.debugExitPort, radix: 16)),iosize=0x04"]
        }
        return arguments
    }

    public var command: Command {
        Command(target.qemuSystem, arguments)
    }
}
