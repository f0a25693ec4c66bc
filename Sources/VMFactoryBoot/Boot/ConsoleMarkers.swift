import Foundation
import VMFactoryCore
import VMFactoryKernel

/// What a boot's console says about where the boot is, read from recorded lines.
public enum ConsoleMarkers {
    /// The init's first line: `vmfactory-init: ready 0.412345` (CLOCK_BOOTTIME seconds).
    public static let ready = "vmfactory-init: ready"
    /// The kernel handing over to the initrd's init (a KERN_INFO line, hidden by `quiet`).
    public static let runInit = "Run /init as init process"
    /// The end of a kernel booted without an initrd: nothing to mount as root.
    public static let vfsPanic = "VFS: Unable to mount root fs"
    public static let exitPrefix = "vmfactory-init: exit "

    /// The printk time stamp of a line, `[    0.412345] …`.
    public static func printkTime(_ line: String) -> Double? {
        guard line.hasPrefix("["), let close = line.firstIndex(of: "]") else { return nil }
        return Double(line[line.index(after: line.startIndex)..<close].trimmingCharacters(in: .whitespaces))
    }

    /// The guest's CLOCK_BOOTTIME in the init's ready line.
    public static func readyBoottime(_ line: String) -> Double? {
        guard let range = line.range(of: ready + " ") else { return nil }
        return Double(line[range.upperBound...].prefix { !$0.isWhitespace })
    }

    /// The entrypoint's exit code from `vmfactory-init: exit N`.
    public static func exitCode(in lines: [ConsoleLine]) -> Int32? {
        for line in lines.reversed() {
            if let range = line.text.range(of: exitPrefix) {
                return Int32(line.text[range.upperBound...].prefix { $0.isNumber })
            }
        }
        return nil
    }
}

/// The moments of one boot, in seconds since QEMU was spawned (host, monotonic), with the
/// guest's own clocks beside them.
public struct BootPhases: Sendable, Codable, Equatable {
    public var firstOutput: Double?
    public var runInit: Double?
    /// The ready line, or the VFS panic line for a kernel booted without an initrd.
    public var marker: Double?
    public var exit: Double?
    /// printk's time stamp on the `Run /init` line, when shown.
    public var guestRunInit: Double?
    /// The guest's CLOCK_BOOTTIME in the ready line (virtual time under `-icount`).
    public var guestReady: Double?

    public static let names = ["first-output", "run-init", "marker", "exit", "guest-run-init", "guest-ready"]

    public init(firstOutput: Double? = nil, runInit: Double? = nil, marker: Double? = nil, exit: Double? = nil, guestRunInit: Double? = nil, guestReady: Double? = nil) {
        self.firstOutput = firstOutput
        self.runInit = runInit
        self.marker = marker
        self.exit = exit
        self.guestRunInit = guestRunInit
        self.guestReady = guestReady
    }

    /// Reads the phases from a recorded run. `markerText` is the ready line's prefix, or the
    /// VFS panic for a kernel booted alone.
    public init(lines: [ConsoleLine], markerText: String, exit: Double?) {
        self.init(exit: exit)
        firstOutput = lines.first?.time
        if let line = lines.first(where: { $0.text.contains(ConsoleMarkers.runInit) }) {
            runInit = line.time
            guestRunInit = ConsoleMarkers.printkTime(line.text)
        }
        if let line = lines.first(where: { $0.text.contains(markerText) }) {
            marker = line.time
            guestReady = ConsoleMarkers.readyBoottime(line.text)
        }
    }

    public func value(_ name: String) -> Double? {
        switch name {
        case "first-output": return firstOutput
        case "run-init": return runInit
        case "marker": return marker
        case "exit": return exit
        case "guest-run-init": return guestRunInit
        case "guest-ready": return guestReady
        default: return nil
        }
    }
}
