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
