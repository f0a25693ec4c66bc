import Foundation
import VMFactoryCore

/// Signal names and numbers as images and docker spell them: SIGTERM, TERM, 15, SIGRTMIN+3.
public enum Signals {
    static let names: [String: Int32] = [
        "HUP": SIGHUP, "INT": SIGINT, "QUIT": SIGQUIT, "ILL": SIGILL, "TRAP": SIGTRAP, "ABRT": SIGABRT, "BUS": SIGBUS,
        "FPE": SIGFPE, "KILL": SIGKILL, "USR1": SIGUSR1, "SEGV": SIGSEGV, "USR2": SIGUSR2, "PIPE": SIGPIPE, "ALRM": SIGALRM,
        "TERM": SIGTERM, "STKFLT": 16, "CHLD": SIGCHLD, "CONT": SIGCONT, "STOP": SIGSTOP, "TSTP": SIGTSTP, "TTIN": SIGTTIN,
        "TTOU": SIGTTOU, "URG": SIGURG, "XCPU": SIGXCPU, "XFSZ": SIGXFSZ, "VTALRM": SIGVTALRM, "PROF": SIGPROF,
        "WINCH": SIGWINCH, "IO": SIGIO, "PWR": 30, "SYS": SIGSYS,
    ]
    /// Linux's real-time signals as the C library leaves them to programs.
    static let realtimeMin: Int32 = 34
    static let realtimeMax: Int32 = 64

    public static func number(of text: String, what: String) throws -> Int32 {
        let upper = text.uppercased()
        let name = upper.hasPrefix("SIG") ? String(upper.dropFirst(3)) : upper
        if let number = Int32(name), number > 0, number <= realtimeMax { return number }
        if let number = names[name] { return number }
        if name.hasPrefix("RTMIN"), let offset = Int32(name == "RTMIN" ? "0" : String(name.dropFirst(5))), realtimeMin + offset <= realtimeMax, offset >= 0 {
            return realtimeMin + offset
        }
        if name.hasPrefix("RTMAX"), let offset = Int32(name == "RTMAX" ? "0" : String(name.dropFirst(5))), realtimeMax + offset >= realtimeMin, offset <= 0 {
            return realtimeMax + offset
        }
        throw VMFactoryError(.invalidArgument, "\(what) '\(text)' is not a signal", hint: "name a signal as SIGTERM, TERM or 15")
    }
}
