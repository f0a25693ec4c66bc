import Foundation

/// Sizes for people: `12.3 MiB`.
public enum ByteCount {
    public static func format(_ bytes: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
    }
}

/// Elapsed time as `1m23s` or `8.4s`.
public enum Elapsed {
    public static func format(_ duration: Duration) -> String {
        let seconds = duration.seconds
        if seconds < 60 { return String(format: "%.1fs", seconds) }
        let whole = Int(seconds)
        return "\(whole / 60)m\(String(format: "%02d", whole % 60))s"
    }
}
