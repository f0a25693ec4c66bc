import ArgumentParser
import VMFactory

struct Doctor: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check the host tools the targets need and print the apt-get line that adds what is missing.")

    @OptionGroup var global: GlobalOptions

    @Option(help: "x86_64, s390x or all.")
    var target: TargetSelection = .all

    func run() async throws {
        let selection = self.target
        try await global.run { _ in
            let targets = selection == .all ? Target.allCases : [Target(rawValue: selection.rawValue)!]
            let report = VMFactory.Doctor.check(targets: targets)
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
