import ArgumentParser
import VMFactoryBoot
import VMFactoryCore
import VMFactoryKernel

struct Doctor: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check the host tools the targets need and print the apt-get line that adds what is missing.")

    @OptionGroup var global: GlobalOptions

    @Option(help: "x86_64, s390x or all.")
    var target: TargetSelection = .all

    @Flag(help: "Print only the Debian packages that are missing, on one line (what scripts/setup installs).")
    var missingPackages = false

    func run() async throws {
        let selection = self.target
        let missingOnly = self.missingPackages
        try await global.perform { context, _ in
            let targets = selection == .all ? Target.allCases : [Target(rawValue: selection.rawValue)!]
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
