import Foundation
import VMFactoryCore
import VMFactoryKernel

/// Where boot time goes, from one boot with `initcall_debug`: the slowest initcalls, the
/// largest gaps between console lines, and a hint where the cause is known.
public struct BootExplanation: Sendable, Codable {
    public struct Initcall: Sendable, Codable, Equatable {
        public var name: String
        public var microseconds: Int
        public var hint: String?
    }

    public struct Gap: Sendable, Codable, Equatable {
        public var seconds: Double
        /// Measured on the guest's printk clock (else the host's).
        public var guestClock: Bool
        public var before: String
        public var after: String
        public var hint: String?
    }

    public var cmdline: String
    public var slowest: [Initcall]
    public var initcallMicroseconds: Int
    public var gaps: [Gap]
    public var console: [ConsoleLine]
}

public enum BootExplainer {
    /// The command line for an explaining boot: everything printed, every initcall timed.
    public static func cmdline(from base: String) -> String {
        let words = base.split(separator: " ").map(String.init).filter { $0 != "quiet" && !$0.hasPrefix("loglevel=") }
        var result = [String]()
        var rest = [String]()
        if let dash = words.firstIndex(of: "--") {
            result = Array(words[..<dash])
            rest = Array(words[dash...])
        } else {
            result = words
        }
        return (result + ["initcall_debug", "ignore_loglevel"] + rest).joined(separator: " ")
    }

    /// `initcall foo+0x0/0x40 returned 0 after 1234 usecs`
    static func initcall(_ text: String) -> (String, Int)? {
        guard let range = text.range(of: "initcall "), let after = text.range(of: " after "), text.hasSuffix("usecs") else { return nil }
        let name = text[range.upperBound...].prefix { $0 != "+" && $0 != " " }
        let number = text[after.upperBound...].prefix { $0.isNumber }
        guard !name.isEmpty, let usecs = Int(number), text.contains("returned") else { return nil }
        return (String(name), usecs)
    }

    /// Function names by address from a `System.map`, for kernels built without kallsyms,
    /// whose initcall_debug lines name addresses.
    public static func symbols(systemMap path: String) -> [String: String] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [:] }
        var result: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count == 3, "tTwW".contains(fields[1]) else { continue }
            result["0x" + fields[0].lowercased()] = String(fields[2])
        }
        return result
    }

    public static func explain(lines: [ConsoleLine], cmdline: String, symbols: [String: String] = [:], top: Int = 10) -> BootExplanation {
        var initcalls: [BootExplanation.Initcall] = []
        for line in lines {
            if let (address, usecs) = initcall(line.text) {
                let name = symbols[address.lowercased()] ?? address
                initcalls.append(.init(name: name, microseconds: usecs, hint: hint(initcall: name)))
            }
        }
        let total = initcalls.map(\.microseconds).reduce(0, +)
        initcalls.sort { $0.microseconds > $1.microseconds }

        // Gaps between consecutive lines: on the guest's printk clock where both lines have a
        // stamp, else on the host's.
        var gaps: [BootExplanation.Gap] = []
        for (previous, line) in zip(lines, lines.dropFirst()) {
            let guest = ConsoleMarkers.printkTime(previous.text).flatMap { a in ConsoleMarkers.printkTime(line.text).map { $0 - a } }
            let seconds = guest ?? (line.time - previous.time)
            gaps.append(.init(seconds: seconds, guestClock: guest != nil, before: previous.text, after: line.text, hint: hint(before: previous.text, after: line.text, seconds: seconds)))
        }
        gaps.sort { $0.seconds > $1.seconds }
        return BootExplanation(cmdline: cmdline, slowest: Array(initcalls.prefix(top)), initcallMicroseconds: total, gaps: Array(gaps.prefix(5)), console: lines)
    }

    static func hint(initcall name: String) -> String? {
        let lower = name.lowercased()
        if lower.contains("rtc") || lower.contains("cmos") {
            return "reading the RTC: without one (QEMU microvm with rtc=off) the x86 kernel waits up to a second for it; boot microvm with rtc=on"
        }
        if lower.contains("pci") { return "PCI probing: QEMU microvm has no PCI bus; leave CONFIG_PCI off" }
        if lower.contains("serial8250") || lower.contains("8250") { return "8250 UART probing of the legacy ports; 8250.nr_uarts=1 limits it to ttyS0" }
        if lower.contains("raid6") || lower.contains("xor") || lower.contains("crypto") || lower.contains("crc32c") || lower.contains("alg") {
            return "crypto or RAID self-tests and benchmarks at boot; CONFIG_CRYPTO_MANAGER_DISABLE_TESTS=y and fewer algorithms skip them"
        }
        if lower.contains("populate_rootfs") || lower.contains("unpack") {
            return "unpacking the initrd; an uncompressed initrd unpacks fastest under emulation"
        }
        if lower.contains("inet6") || lower.contains("ipv6") { return "IPv6 setup; leave CONFIG_IPV6 off when the guest does not need it" }
        if lower.contains("virtio") { return "virtio device probing" }
        return nil
    }

    static func hint(before: String, after: String, seconds: Double) -> String? {
        if after.contains("BogoMIPS") || before.contains("Calibrating delay loop") {
            return "delay-loop calibration; lpj=<loops> on the command line skips it"
        }
        if after.contains("Refined TSC clocksource calibration") || after.contains("tsc: Marking TSC unstable") {
            return "TSC calibration; tsc=reliable, or a KVM clock, avoids the wait"
        }
        if seconds >= 0.9, before.lowercased().contains("rtc") || after.lowercased().contains("rtc") {
            return "a one-second wait for an RTC; boot QEMU microvm with rtc=on"
        }
        if after.contains("Run /init") || after.contains("Freeing unused kernel") {
            return "unpacking the initrd and freeing init memory before /init runs"
        }
        if after.contains("random: crng init done") { return "waiting for entropy; virtio-rng or random.trust_cpu=on" }
        return nil
    }
}
