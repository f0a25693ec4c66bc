import VMFactoryCore

/// The kernel command lines other runtimes pass, so that a benchmark measures what a kernel
/// will see there. Each is the runtime's own documented or coded default.
public enum RuntimeCmdline: String, Sendable, CaseIterable, Codable {
    case firecracker, kata, qemu

    /// The line for `target`, or nil when the runtime has no guests of that architecture.
    public func cmdline(for target: Target) -> String? {
        switch (self, target) {
        case (.firecracker, .x86_64):
            // Firecracker's getting-started guide (docs/getting-started.md), "boot_args".
            return "console=ttyS0 reboot=k panic=1 pci=off"
        case (.firecracker, .s390x):
            return nil
        case (.kata, .x86_64):
            // Kata Containers' runtime, src/runtime/virtcontainers/qemu_amd64.go (kernelParams)
            // and qemu_arch_base.go ("quiet" outside debug), with its virtio console.
            return "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k cryptomgr.notests net.ifnames=0 pci=lastbus=0 console=hvc0 quiet"
        case (.kata, .s390x):
            // qemu_s390x.go adds no parameters of its own: "quiet" and the virtio console.
            return "console=hvc0 quiet"
        case (.qemu, .x86_64):
            // QEMU's microvm documentation (docs/system/i386/microvm.rst) boots with
            // console=ttyS0 reboot=t; scripts add quiet and panic=-1.
            return "console=ttyS0 reboot=t panic=-1 quiet"
        case (.qemu, .s390x):
            return "console=ttysclp0 panic=-1 quiet"
        }
    }

    public var runtimeName: String {
        switch self {
        case .firecracker: return "Firecracker"
        case .kata: return "Kata Containers"
        case .qemu: return "QEMU"
        }
    }
}
