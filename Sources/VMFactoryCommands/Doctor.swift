import ArgumentParser
import VMFactoryBoot
import VMFactoryCore
import VMFactoryExec
import VMFactoryKernel

struct Doctor: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check the host tools the targets need and print the apt-get line that adds what is missing.")

    @OptionGroup var global: GlobalOptions

    @Option(help: "x86_64, s390x or all.")
    var target: TargetSelection = .all

    @Flag(help: "Print only the Debian packages that are missing, on one line (what scripts/setup installs).")
    var missingPackages = false

    @Option(help: "Check these distcc helpers instead: each must answer and compile with the targets' compilers ('HOST[:PORT][/LIMIT] …').")
    var distcc: String?

    @Flag(help: "Check icecream instead: this machine's iceccd answers and each target's compiler compiles through icecc to the bytes it makes here.")
    var icecc = false

    struct IceccCheck: Encodable {
        var daemon: String?
        var ok: Bool
        var problems: [String]
    }

    func validate() throws {
        if icecc && distcc != nil { throw ValidationError("--icecc and --distcc check one engine each; give one") }
    }

    struct HelperCheck: Encodable {
        var host: String
        var ok: Bool
        var problems: [String]
    }

    func run() async throws {
        let selection = self.target
        let missingOnly = self.missingPackages
        let distcc = self.distcc, icecc = self.icecc
        try await global.perform { context, console in
            let targets = selection == .all ? Target.allCases : [Target(rawValue: selection.rawValue)!]
            if let distcc {
                let planner = DistccPlanner(runner: context.runner, console: console, environment: context.environment, cacheDirectory: global.cacheDirectory(context))
                let compilers = targets.map { $0.compiler() }
                let checks = try await planner.check(distcc, compilers: compilers).map { HelperCheck(host: $0.host, ok: $0.problems.isEmpty, problems: $0.problems) }
                var lines = checks.map { check in
                    check.ok ? "\(check.host): ok (\(compilers.joined(separator: ", ")))" : "\(check.host): " + check.problems.joined(separator: "; ")
                }
                if checks.contains(where: { !$0.ok }) {
                    lines += ["", "A helper must run distccd reachable from here (--allow this machine) and have the same compilers by the same names, allowed in its /usr/lib/distcc (update-distcc-symlinks)."]
                }
                return Output(text: lines.joined(separator: "\n"), value: checks, failed: checks.contains { !$0.ok })
            }
            if icecc {
                let planner = IceccPlanner(runner: context.runner, console: console, environment: context.environment, cacheDirectory: global.cacheDirectory(context))
                let compilers = targets.map { $0.compiler() }
                let found = try await planner.check(compilers: compilers)
                let check = IceccCheck(daemon: found.daemon, ok: found.problems.isEmpty, problems: found.problems)
                var lines = check.ok
                    ? ["icecc: ok through the iceccd at \(found.daemon ?? "?") (\(compilers.joined(separator: ", ")))"]
                    : found.problems.map { "icecc: " + $0 }
                if !check.ok {
                    lines += ["", "icecream needs iceccd running here (systemctl start iceccd), pointed at the scheduler (-s HOST or broadcast), and helpers that run iceccd too."]
                }
                return Output(text: lines.joined(separator: "\n"), value: check, failed: !check.ok)
            }
            let report = VMFactoryCore.Doctor.check(targets: targets, environment: context.environment)
            if missingOnly {
                // For scripts/setup: the packages to install, one line, nothing when none.
                return Output(text: report.missingPackages.joined(separator: " "), value: report.missingPackages)
            }
            let width = report.checks.map(\.name.count).max() ?? 0
            var lines = report.checks.map { check in
                "\(check.found ? "ok     " : "MISSING") \(check.name.padding(toLength: width, withPad: " ", startingAt: 0))  \(check.purpose)"
                    + (check.found ? "" : " (Debian package \(check.package))")
            }
            if let command = report.installCommand {
                lines += ["", "To install what is missing:", "  " + command]
            } else {
                lines += ["", "Everything needed for \(targets.map(\.rawValue).joined(separator: " and ")) is installed."]
            }
            return Output(text: lines.joined(separator: "\n"), value: report, failed: !report.ok)
        }
    }
}
