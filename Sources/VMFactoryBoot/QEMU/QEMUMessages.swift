import Foundation
import VMFactoryCore

/// QEMU's messages that mean the guest will never run again although QEMU itself stays up.
/// With KVM, an internal error or a failed VM entry pauses the machine and QEMU waits on its
/// monitor for ever: a host whose /dev/kvm opens but cannot run this guest says so at once.
public enum QEMUMessages {
    /// The line itself when it is one of those messages.
    public static func acceleratorFailure(in line: String) -> String? {
        let text = line.trimmingCharacters(in: .whitespaces)
        if text.hasPrefix("KVM internal error") || text.hasPrefix("KVM: entry failed") || text.hasPrefix("error: kvm run failed") {
            return text
        }
        return nil
    }

    /// How long a guest under KVM may stay silent before vmfactory says what that may mean.
    public static let kvmSilence: Duration = .seconds(10)
    public static let kvmSilenceNote = "the guest has said nothing for \(Int(kvmSilence.components.seconds)) s under KVM; on a host whose /dev/kvm opens but cannot run guests (a VM without nested virtualisation, say) it never will: stop it and use --accel tcg"

    /// What vmfactory says when `said` stopped the guest, with QEMU's own lines under it.
    public static func acceleratorError(_ said: String, stderr: String) -> VMFactoryError {
        VMFactoryError(
            .acceleratorFailed, "KVM stopped the guest at once (QEMU: \(said)); QEMU was stopped",
            hint: "this host's /dev/kvm opens but cannot run the guest: use --accel tcg, or --accel auto, which tries KVM once and falls back to TCG",
            details: ["QEMU said:"] + stderr.split(separator: "\n").prefix(12).map { "| " + $0 }
        )
    }
}
