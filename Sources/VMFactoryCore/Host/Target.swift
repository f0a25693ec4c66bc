import Foundation

/// A guest CPU architecture vmfactory builds for.
public enum Target: String, CaseIterable, Sendable, Codable, Comparable, CustomStringConvertible {
    case x86_64
    case s390x

    public var description: String { rawValue }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }

    /// `ARCH=` for make. x86_64 rather than x86: under ARCH=x86 the 64BIT prompt is visible
    /// and tinyconfig or allnoconfig turn it off, giving a 32-bit kernel.
    public var makeArch: String {
        switch self {
        case .x86_64: return "x86_64"
        case .s390x: return "s390"
        }
    }

    /// Whether the architecture stores numbers most significant byte first.
    public var isBigEndian: Bool { self == .s390x }

    /// The folder under arch/ (kbuild's SRCARCH).
    public var sourceArch: String {
        switch self {
        case .x86_64: return "x86"
        case .s390x: return "s390"
        }
    }

    /// The GNU triple's prefix of the cross toolchain, Debian's naming.
    public var gnuTriple: String {
        switch self {
        case .x86_64: return "x86_64-linux-gnu"
        case .s390x: return "s390x-linux-gnu"
        }
    }

    /// `CROSS_COMPILE=` for building on `host`; nil when the host compiles natively.
    public func crossCompilePrefix(host: String = Target.hostMachine) -> String? {
        host == rawValue ? nil : gnuTriple + "-"
    }

    /// The C compiler that produces binaries for this target on `host`.
    public func compiler(host: String = Target.hostMachine) -> String {
        (crossCompilePrefix(host: host) ?? "") + "gcc"
    }

    public var qemuSystem: String {
        switch self {
        case .x86_64: return "qemu-system-x86_64"
        case .s390x: return "qemu-system-s390x"
        }
    }

    /// `uname -m` of this machine.
    public static let hostMachine: String = {
        var name = utsname()
        uname(&name)
        return withUnsafeBytes(of: &name.machine) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
    }()
}
