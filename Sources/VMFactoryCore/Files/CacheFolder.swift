import Foundation

/// Where vmfactory's cache is: `--cache-dir` when given, else `$XDG_CACHE_HOME/vmfactory`, else
/// `~/.cache/vmfactory`.
public enum CacheFolder {
    public static func path(given: String?, environment: [String: String], currentDirectory: String) -> String {
        if let given { return FileStore.absolute(given, relativeTo: currentDirectory) }
        if let xdg = environment["XDG_CACHE_HOME"], xdg.hasPrefix("/") { return xdg + "/vmfactory" }
        let home = environment["HOME"] ?? NSHomeDirectory()
        return home + "/.cache/vmfactory"
    }
}
