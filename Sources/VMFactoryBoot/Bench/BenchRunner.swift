import Foundation
import VMFactoryCore
import VMFactoryKernel

/// One kernel (and initrd) in a benchmark.
public struct BenchCandidate: Sendable, Codable, Equatable {
    public var label: String
    public var kernel: String
    public var kernelSHA256: SHA256Digest?
    public var initrd: String?
    public var initrdSHA256: SHA256Digest?
    public var cmdline: String
}

/// One boot of a benchmark: the host times of its phases, the guest's own clocks, and the
/// console it printed. A failed boot is kept, marked failed, never dropped.
public struct BenchSample: Sendable, Codable, Equatable {
    public var candidate: String
    /// 0-based, counting warm-ups.
    public var index: Int
    public var warmup: Bool
    public var ok: Bool
    public var failure: String?
    public var phases: BootPhases
    public var status: Int32?
    public var console: [ConsoleLine]
}

/// Per phase, the statistics of one candidate's measured (not warm-up, not failed) boots.
public struct CandidateSummary: Sendable, Codable, Equatable {
    public var candidate: String
    public var phases: [String: Summary]
    public var failed: Int
}

/// A candidate against the first one, per phase.
public struct Comparison: Sendable, Codable, Equatable {
    public var baseline: String
    public var candidate: String
    public var phases: [String: PermutationTest.Result]
}

/// Everything a benchmark measured, with the environment it ran in.
public struct BenchReport: Sendable, Codable {
    public struct Environment: Sendable, Codable, Equatable {
        public var hostCPU: String
        public var hostCores: Int
        public var qemu: String
        public var accelerator: QEMUMachine.Accelerator
        public var icount: Bool
        public var vcpus: Int
        public var memory: String
        public var console: String
        public var machine: [String]
        public var notes: [String]
    }

    public var schema = 1
    public var recipe: String
    public var target: Target
    public var marker: String
    public var runs: Int
    public var warmup: Int
    public var environment: Environment
    public var candidates: [BenchCandidate]
    public var samples: [BenchSample]
    public var summaries: [CandidateSummary]
    public var comparisons: [Comparison]

    /// The phases that have at least one value, in their natural order.
    public var phaseNames: [String] {
        BootPhases.names.filter { name in summaries.contains { $0.phases[name] != nil } }
    }

    public static func summarize(_ samples: [BenchSample], candidates: [BenchCandidate]) -> ([CandidateSummary], [Comparison]) {
        func values(_ label: String, _ phase: String) -> [Double] {
            samples.filter { $0.candidate == label && !$0.warmup && $0.ok }.compactMap { $0.phases.value(phase) }
        }
        let summaries = candidates.map { candidate in
            CandidateSummary(
                candidate: candidate.label,
                phases: Dictionary(uniqueKeysWithValues: BootPhases.names.compactMap { phase in Summary(values(candidate.label, phase)).map { (phase, $0) } }),
                failed: samples.filter { $0.candidate == candidate.label && !$0.warmup && !$0.ok }.count
            )
        }
        guard let baseline = candidates.first else { return (summaries, []) }
        let comparisons = candidates.dropFirst().map { candidate in
            Comparison(
                baseline: baseline.label, candidate: candidate.label,
                phases: Dictionary(uniqueKeysWithValues: BootPhases.names.compactMap { phase in
                    PermutationTest.compare(values(baseline.label, phase), values(candidate.label, phase)).map { (phase, $0) }
                })
            )
        }
        return (summaries, comparisons)
    }
}

/// Boots the candidates in turn (A B A B …), `warmup` discarded rounds first.
public struct BenchRunner: Sendable {
    public var timeout: Duration
    public var console: Console
    public var bootRunner: BootRunner

    public func run(_ machines: [(BenchCandidate, QEMUMachine)], marker: String, runs: Int, warmup: Int) async throws -> [BenchSample] {
        var samples: [BenchSample] = []
        let total = (runs + warmup) * machines.count
        for round in 0..<(runs + warmup) {
            for (candidate, machine) in machines {
                try Task.checkCancellation()
                let run = try await bootRunner.run(machine.command, timeout: timeout)
                let phases = BootPhases(lines: run.lines, markerText: marker, exit: run.ending == .exited ? run.seconds : nil)
                var failure: String? = nil
                if run.ending == .timedOut {
                    failure = "timed out after \(Elapsed.format(timeout))" + (phases.marker == nil ? " without '\(marker)'" : "")
                } else if phases.marker == nil {
                    let said = run.stderr.split(separator: "\n").last.map { ": " + $0 } ?? ""
                    failure = "QEMU exited (\(run.signal.map { "signal \($0)" } ?? "status \(run.status ?? -1)")) without '\(marker)'\(said)"
                }
                let sample = BenchSample(
                    candidate: candidate.label, index: round, warmup: round < warmup, ok: failure == nil, failure: failure,
                    phases: phases, status: run.status, console: run.lines
                )
                samples.append(sample)
                let done = samples.count
                let what = sample.warmup ? "warm-up" : "run \(round - warmup + 1)/\(runs)"
                if let failure {
                    console.warning("bench [\(done)/\(total)] \(candidate.label) \(what): failed: \(failure)")
                } else {
                    console.progress("bench [\(done)/\(total)] \(candidate.label) \(what): ready at \(String(format: "%.3f", phases.marker ?? 0)) s, exit at \(String(format: "%.3f", phases.exit ?? 0)) s", force: true)
                }
            }
        }
        console.endProgress()
        return samples
    }
}
