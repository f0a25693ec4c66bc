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

    /// The cumulative distribution of each phase, one panel per phase and one line per
    /// kernel, each kernel's median marked. Ticks sit at round values inside the panel, so
    /// that the labels of neighbouring panels never meet.
    public var svg: String {
        let phases = phaseNames
        let layout = ChartLayout(panels: phases.count, legendRows: candidates.count)
        var out = [
            #"<svg xmlns="http://www.w3.org/2000/svg" width="\#(Int(layout.width))" height="\#(Int(layout.height))" font-family="sans-serif" font-size="11">"#,
            #"<rect width="100%" height="100%" fill="white"/>"#,
            #"<text x="\#(layout.margin)" y="24" font-size="14">Boot latency, \#(escape(recipe))/\#(target.rawValue): cumulative distribution per phase (\#(environment.accelerator.rawValue)\#(environment.icount ? ", icount" : ""))</text>"#,
        ]
        for (index, phase) in phases.enumerated() {
            let series = candidates.map { candidate in
                samples.filter { $0.candidate == candidate.label && !$0.warmup && $0.ok }.compactMap { $0.phases.value(phase) }.sorted()
            }
            out += panel(phase, series: series, origin: layout.origin(of: index), size: layout.panel)
        }
        for (number, candidate) in candidates.enumerated() {
            let y = layout.legendTop + 20 * Double(number)
            out.append(#"<rect x="\#(layout.margin)" y="\#(y - 9)" width="18" height="4" fill="\#(ChartLayout.color(number))"/>"#)
            out.append(#"<text x="\#(layout.margin + 26)" y="\#(y - 4)">\#(escape(candidate.label)) (dashed: its median)</text>"#)
        }
        out.append("</svg>")
        return out.joined(separator: "\n") + "\n"
    }

    /// One phase: frame, round ticks, axis titles, a step line and a median per kernel.
    func panel(_ phase: String, series: [[Double]], origin: (x: Double, y: Double), size: (width: Double, height: Double)) -> [String] {
        let all = series.flatMap { $0 }
        guard let low = all.min(), let high = all.max() else { return [] }
        let span = max(high - low, 1e-6)
        let from = low - span * 0.08, to = high + span * 0.08
        let (x0, top) = origin
        let plotTop = top + 22, plotHeight = size.height - 22
        func px(_ value: Double) -> Double { x0 + (value - from) / (to - from) * size.width }
        func py(_ fraction: Double) -> Double { plotTop + (1 - fraction) * plotHeight }
        var out = [
            #"<text x="\#(x0)" y="\#(top + 12)" font-size="12" font-weight="bold">\#(escape(title(phase)))</text>"#,
            #"<rect x="\#(x0)" y="\#(plotTop)" width="\#(size.width)" height="\#(plotHeight)" fill="none" stroke="gray"/>"#,
        ]
        for tick in ChartLayout.ticks(from: from, to: to) {
            out.append(#"<line x1="\#(px(tick))" y1="\#(py(0))" x2="\#(px(tick))" y2="\#(py(0) + 4)" stroke="gray"/>"#)
            out.append(#"<text x="\#(px(tick))" y="\#(py(0) + 16)" text-anchor="middle">\#(ChartLayout.label(tick))</text>"#)
        }
        let clock = phase.hasPrefix("guest") ? "guest clock" : "host clock, from QEMU's spawn"
        out.append(#"<text x="\#(x0 + size.width / 2)" y="\#(py(0) + 32)" text-anchor="middle">milliseconds (\#(clock))</text>"#)
        for fraction in [0.0, 0.5, 1.0] {
            out.append(#"<text x="\#(x0 - 6)" y="\#(py(fraction) + 4)" text-anchor="end">\#(fraction == 0.5 ? "0.5" : String(Int(fraction)))</text>"#)
        }
        out.append(#"<text transform="translate(\#(x0 - 34) \#(plotTop + plotHeight / 2)) rotate(-90)" text-anchor="middle">fraction of boots</text>"#)
        for (number, values) in series.enumerated() where !values.isEmpty {
            var points: [String] = [String(format: "%.1f,%.1f", px(values[0]), py(0))]
            for (rank, value) in values.enumerated() {
                points.append(String(format: "%.1f,%.1f", px(value), py(Double(rank) / Double(values.count))))
                points.append(String(format: "%.1f,%.1f", px(value), py(Double(rank + 1) / Double(values.count))))
            }
            let color = ChartLayout.color(number)
            out.append(#"<polyline fill="none" stroke-width="2" stroke="\#(color)" points="\#(points.joined(separator: " "))"/>"#)
            let median = Summary.median(values)
            out.append(#"<line x1="\#(px(median))" y1="\#(plotTop)" x2="\#(px(median))" y2="\#(py(0))" stroke="\#(color)" stroke-dasharray="4 3"/>"#)
            // A white outline keeps the label readable where it crosses a line.
            out.append(#"<text x="\#(px(median) + 3)" y="\#(plotTop + 12 + 12 * Double(number))" fill="\#(color)" stroke="white" stroke-width="3" paint-order="stroke">\#(Self.ms(median))</text>"#)
        }
        return out
    }

    func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}

/// Where the panels of `report.svg` go, and the round values its axes are marked at.
struct ChartLayout {
    let margin = 60.0
    let panel = (width: 400.0, height: 210.0)
    /// Room between panels for the y axis title and the tick labels below.
    let gap = (horizontal: 90.0, vertical: 70.0)
    let columns = 2
    let rows: Int
    let legendRows: Int

    init(panels: Int, legendRows: Int) {
        rows = max(1, (panels + columns - 1) / columns)
        self.legendRows = legendRows
    }

    var width: Double { margin + Double(columns) * panel.width + Double(columns - 1) * gap.horizontal + margin / 2 }
    var legendTop: Double { 46 + Double(rows) * (panel.height + gap.vertical) + 10 }
    var height: Double { legendTop + 20 * Double(legendRows) + 10 }

    func origin(of index: Int) -> (x: Double, y: Double) {
        (margin + Double(index % columns) * (panel.width + gap.horizontal), 46 + Double(index / columns) * (panel.height + gap.vertical))
    }

    static let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    static func color(_ number: Int) -> String { colors[number % colors.count] }

    /// Two to six round values (1, 2, 2.5 or 5 times a power of ten, in milliseconds)
    /// strictly inside `from...to` (seconds): the step is the first round value of at least a
    /// fifth of the span, and no round value is more than twice the one before.
    static func ticks(from: Double, to: Double) -> [Double] {
        let span = (to - from) * 1000
        let raw = span / 5
        let power = pow(10, floor(log10(raw)))
        let step = [1.0, 2.0, 2.5, 5.0, 10.0].map { $0 * power }.first { $0 >= raw * 0.999 } ?? 10 * power
        var ticks: [Double] = []
        var value = (ceil(from * 1000 / step) * step)
        while value < to * 1000 {
            if value > from * 1000 { ticks.append(value / 1000) }
            value += step
        }
        return ticks
    }

    /// A tick's value in milliseconds with as few digits as it needs.
    static func label(_ seconds: Double) -> String {
        let ms = seconds * 1000
        if ms == ms.rounded() { return String(Int(ms)) }
        return ms >= 10 ? String(format: "%.1f", ms) : String(format: "%.2f", ms)
    }
}
