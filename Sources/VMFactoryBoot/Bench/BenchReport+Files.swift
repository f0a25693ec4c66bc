import Foundation
import VMFactoryCore
import VMFactoryKernel

extension BenchReport {
    static let phaseTitles: [String: String] = [
        "first-output": "spawn → first console output",
        "run-init": "spawn → kernel runs /init",
        "marker": "spawn → ready line",
        "exit": "spawn → QEMU exit",
        "guest-run-init": "guest printk time at Run /init",
        "guest-ready": "guest CLOCK_BOOTTIME at ready",
    ]

    func title(_ phase: String) -> String {
        if phase == "marker", marker == ConsoleMarkers.vfsPanic { return "spawn → VFS panic (kernel only)" }
        return Self.phaseTitles[phase] ?? phase
    }

    /// `report.json`, `report.md` and `report.svg` in `directory`, each written atomically.
    public func write(to directory: String) throws {
        try FileStore.writeAtomically(try JSON.encode(self), to: directory + "/report.json")
        try FileStore.writeAtomically(markdown, to: directory + "/report.md")
        try FileStore.writeAtomically(svg, to: directory + "/report.svg")
    }

    static func ms(_ seconds: Double) -> String { String(format: "%.1f", seconds * 1000) }

    /// Tables a person can paste into an issue.
    public var markdown: String {
        var lines = ["# Boot latency: \(recipe)/\(target)", ""]
        lines.append("\(runs) runs per kernel after \(warmup) warm-up\(warmup == 1 ? "" : "s"), interleaved; times in milliseconds from QEMU's spawn, on the host's monotonic clock; guest times from the guest's own clocks.")
        lines.append("")
        lines.append("| | |")
        lines.append("| --- | --- |")
        lines.append("| host | \(environment.hostCPU), \(environment.hostCores) cores |")
        lines.append("| QEMU | \(environment.qemu) |")
        lines.append("| accelerator | \(environment.accelerator.rawValue)\(environment.icount ? " with -icount shift=0,sleep=off" : "") |")
        lines.append("| guest | \(environment.vcpus) vCPU, \(environment.memory), console \(environment.console) |")
        for candidate in candidates {
            lines.append("| \(candidate.label) | kernel `\(candidate.kernelSHA256?.short ?? "?")`, initrd `\(candidate.initrdSHA256?.short ?? "none")`, cmdline `\(candidate.cmdline)` |")
        }
        for note in environment.notes { lines.append("| note | \(note) |") }
        lines.append("")
        for phase in phaseNames {
            lines.append("## \(title(phase))")
            lines.append("")
            lines.append("| kernel | n | min | p50 | p90 | max | mean | stddev | failed |")
            lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for summary in summaries {
                guard let s = summary.phases[phase] else { continue }
                lines.append("| \(summary.candidate) | \(s.n) | \(Self.ms(s.min)) | \(Self.ms(s.p50)) | \(Self.ms(s.p90)) | \(Self.ms(s.max)) | \(Self.ms(s.mean)) | \(Self.ms(s.stddev)) | \(summary.failed) |")
            }
            for comparison in comparisons {
                guard let result = comparison.phases[phase] else { continue }
                lines.append("")
                lines.append("\(comparison.candidate) / \(comparison.baseline), ratio of medians: **\(String(format: "%.3f", result.ratio))**, permutation test p = \(String(format: "%.4g", result.pValue)) (\(result.exact ? "exact, " : "")\(result.permutations) permutations)")
            }
            lines.append("")
        }
        let failures = samples.filter { !$0.ok }
        if !failures.isEmpty {
            lines.append("## Failed runs")
            lines.append("")
            for sample in failures {
                lines.append("- \(sample.candidate) run \(sample.index)\(sample.warmup ? " (warm-up)" : ""): \(sample.failure ?? "failed")")
            }
            lines.append("")
        }
        return lines.joined(separator: "\n")
    }

    /// The cumulative distribution of each phase, one line per kernel.
    public var svg: String {
        let phases = phaseNames
        let panelWidth = 420.0, panelHeight = 220.0, margin = 50.0
        let columns = 2
        let rows = max(1, (phases.count + columns - 1) / columns)
        let width = Double(columns) * (panelWidth + margin) + margin
        let height = Double(rows) * (panelHeight + margin * 1.6) + margin + 20 * Double(candidates.count)
        let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
        var out = [
            #"<svg xmlns="http://www.w3.org/2000/svg" width="\#(Int(width))" height="\#(Int(height))" font-family="sans-serif" font-size="11">"#,
            #"<rect width="100%" height="100%" fill="white"/>"#,
            #"<text x="\#(margin)" y="22" font-size="14">Boot latency, \#(escape(recipe))/\#(target.rawValue): cumulative distribution per phase (\#(environment.accelerator.rawValue)\#(environment.icount ? ", icount" : ""))</text>"#,
        ]
        for (index, phase) in phases.enumerated() {
            let x0 = margin + Double(index % columns) * (panelWidth + margin)
            let y0 = 40 + Double(index / columns) * (panelHeight + margin * 1.6)
            let series = candidates.map { candidate in
                samples.filter { $0.candidate == candidate.label && !$0.warmup && $0.ok }.compactMap { $0.phases.value(phase) }.sorted()
            }
            let all = series.flatMap { $0 }
            guard let low = all.min(), let high = all.max() else { continue }
            let span = max(high - low, 1e-6)
            let from = low - span * 0.05, to = high + span * 0.05
            func px(_ value: Double) -> Double { x0 + (value - from) / (to - from) * panelWidth }
            func py(_ fraction: Double) -> Double { y0 + 20 + (1 - fraction) * (panelHeight - 20) }
            out.append(#"<text x="\#(x0)" y="\#(y0 + 12)" font-size="12">\#(escape(title(phase)))</text>"#)
            out.append(#"<rect x="\#(x0)" y="\#(y0 + 20)" width="\#(panelWidth)" height="\#(panelHeight - 20)" fill="none" stroke="gray"/>"#)
            for tick in 0...4 {
                let value = from + (to - from) * Double(tick) / 4
                out.append(#"<text x="\#(px(value))" y="\#(y0 + panelHeight + 14)" text-anchor="middle">\#(Self.ms(value)) ms</text>"#)
            }
            out.append(#"<text x="\#(x0 - 6)" y="\#(py(1) + 4)" text-anchor="end">1</text><text x="\#(x0 - 6)" y="\#(py(0) + 4)" text-anchor="end">0</text>"#)
            for (number, values) in series.enumerated() where !values.isEmpty {
                var points: [String] = [String(format: "%.1f,%.1f", px(values[0]), py(0))]
                for (rank, value) in values.enumerated() {
                    points.append(String(format: "%.1f,%.1f", px(value), py(Double(rank) / Double(values.count))))
                    points.append(String(format: "%.1f,%.1f", px(value), py(Double(rank + 1) / Double(values.count))))
                }
                out.append(#"<polyline fill="none" stroke-width="2" stroke="\#(colors[number % colors.count])" points="\#(points.joined(separator: " "))"/>"#)
            }
        }
        let legendY = height - 20 * Double(candidates.count)
        for (number, candidate) in candidates.enumerated() {
            let y = legendY + 20 * Double(number)
            out.append(#"<rect x="\#(margin)" y="\#(y - 9)" width="18" height="4" fill="\#(colors[number % colors.count])"/>"#)
            out.append(#"<text x="\#(margin + 26)" y="\#(y - 4)">\#(escape(candidate.label))</text>"#)
        }
        out.append("</svg>")
        return out.joined(separator: "\n") + "\n"
    }

    func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
