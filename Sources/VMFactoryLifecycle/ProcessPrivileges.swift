import Foundation
import VMFactoryCore

/// What an OCI runtime's `process` says beyond the command: the exact supplementary groups,
/// resource limits, capability sets, no_new_privs and the umask. The init applies them in the
/// process it starts (docs/run-protocol.md, keys of a process); nothing set, nothing sent.
public struct ProcessPrivileges: Sendable, Equatable, Codable {
    /// The supplementary groups exactly (nil: the user's groups from the image's /etc/group).
    public var groups: [UInt32]?
    public var rlimits: [Rlimit] = []
    /// nil: root keeps every capability, another user none (as without a runtime).
    public var capabilities: Capabilities?
    public var noNewPrivileges = false
    public var umask: UInt32?

    public struct Rlimit: Sendable, Equatable, Codable {
        /// Without the RLIMIT_ prefix: NOFILE, NPROC, …
        public var name: String
        public var soft: UInt64
        public var hard: UInt64

        public init(name: String, soft: UInt64, hard: UInt64) {
            self.name = name
            self.soft = soft
            self.hard = hard
        }
    }

    /// Each set as a mask of capability numbers.
    public struct Capabilities: Sendable, Equatable, Codable {
        public var bounding: UInt64 = 0
        public var effective: UInt64 = 0
        public var permitted: UInt64 = 0
        public var inheritable: UInt64 = 0
        public var ambient: UInt64 = 0

        public init() {}
    }

    public init() {}

    public var isEmpty: Bool { self == ProcessPrivileges() }

    /// The settings' lines for these.
    public var settings: [(String, String)] {
        var pairs: [(String, String)] = []
        if let groups { pairs.append(("groups", groups.map(String.init).joined(separator: ","))) }
        for limit in rlimits {
            func value(_ number: UInt64) -> String { number == UInt64.max ? "unlimited" : String(number) }
            pairs.append(("rlimit", "\(limit.name) \(value(limit.soft)) \(value(limit.hard))"))
        }
        if let capabilities {
            for (key, mask) in [("capbounding", capabilities.bounding), ("capeffective", capabilities.effective), ("cappermitted", capabilities.permitted),
                                ("capinheritable", capabilities.inheritable), ("capambient", capabilities.ambient)] {
                pairs.append((key, String(mask, radix: 16)))
            }
        }
        if noNewPrivileges { pairs.append(("nonewprivs", "1")) }
        if let umask { pairs.append(("umask", String(umask, radix: 8))) }
        return pairs
    }

    /// The setting keys these use (an exec's request passes them on).
    public static let keys: Set<String> = ["groups", "rlimit", "capbounding", "capeffective", "cappermitted", "capinheritable", "capambient", "nonewprivs", "umask"]

    /// Linux's capability numbers by name (linux/capability.h, 6.1).
    public static let capabilityNumbers: [String: Int] = [
        "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6,
        "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_LINUX_IMMUTABLE": 9, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12,
        "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18,
        "CAP_SYS_PTRACE": 19, "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23, "CAP_SYS_RESOURCE": 24,
        "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27, "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30,
        "CAP_SETFCAP": 31, "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35, "CAP_BLOCK_SUSPEND": 36,
        "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40,
    ]

    /// A mask of the named capabilities; the names it does not know, for the caller to say.
    public static func mask(_ names: [String]) -> (mask: UInt64, unknown: [String]) {
        var mask: UInt64 = 0
        var unknown: [String] = []
        for name in names {
            let upper = name.uppercased()
            if let number = capabilityNumbers[upper.hasPrefix("CAP_") ? upper : "CAP_" + upper] { mask |= 1 << UInt64(number) } else { unknown.append(name) }
        }
        return (mask, unknown)
    }

    /// The rlimit names the init knows.
    public static let rlimitNames: Set<String> = [
        "CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK", "AS", "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME",
    ]
}
