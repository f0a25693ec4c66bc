/// The text the guest's init reads its settings from, the run's and an exec's over the run's
/// channel and the recipe's in the initrd's init.conf: `key=value` lines, with line breaks and
/// backslashes in values escaped (one reader in the init, `vmf_conf_next` in conf.c).
public enum SettingsText {
    /// A value as the init's reader takes it back: `\\` for a backslash, `\n` for a line break.
    public static func escaped(_ value: String) -> String {
        // By Unicode scalar: "\r\n" is one Character, and its "\n" must be escaped too.
        var text = ""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\\": text += "\\\\"
            case "\n": text += "\\n"
            default: text.unicodeScalars.append(scalar)
            }
        }
        return text
    }

    /// The pairs as lines, each value escaped.
    public static func lines(_ pairs: [(String, String)]) -> String {
        pairs.map { "\($0.0)=\(escaped($0.1))" }.joined(separator: "\n") + "\n"
    }
}
