import Foundation

/// Facts about the host, for reports and for keys of remembered probes.
public enum HostInfo {
    public static var cpuModel: String {
        let text = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n") where line.hasPrefix("model name") || line.hasPrefix("machine") {
            if let colon = line.firstIndex(of: ":") { return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces) }
        }
        return Target.hostMachine
    }

    public static var cores: Int { ProcessInfo.processInfo.activeProcessorCount }

    /// `uname -r`.
    public static var kernelRelease: String {
        var name = utsname()
        uname(&name)
        return withUnsafeBytes(of: &name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }
}

/// Host names as the guest's kernel takes them (sethostname, at most HOST_NAME_MAX bytes).
public enum HostName {
    public static let maximumLength = 64

    /// Letters, digits, '-' and '.', not starting with '-', at most 64.
    public static func isValid(_ name: String) -> Bool {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")
        return !name.isEmpty && name.count <= maximumLength && name.allSatisfy { allowed.contains($0) } && !name.hasPrefix("-")
    }
}
