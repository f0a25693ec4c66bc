import Foundation
import VMFactoryCore
import VMFactoryKernel

/// Summary statistics of a sample, derived from the raw values.
public struct Summary: Sendable, Codable, Equatable {
    public var n: Int
    public var min: Double
    public var p50: Double
    public var p90: Double
    public var max: Double
    public var mean: Double
    /// Sample standard deviation (n - 1); 0 for a single value.
    public var stddev: Double

    public init?(_ values: [Double]) {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        n = sorted.count
        min = sorted.first!
        max = sorted.last!
        p50 = Self.percentile(sorted, 0.5)
        p90 = Self.percentile(sorted, 0.9)
        mean = sorted.reduce(0, +) / Double(n)
        let mean = self.mean
        stddev = n > 1 ? (sorted.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(n - 1)).squareRoot() : 0
    }

    /// Linear interpolation between closest ranks (the usual definition, R's type 7).
    public static func percentile(_ sorted: [Double], _ fraction: Double) -> Double {
        guard sorted.count > 1 else { return sorted.first ?? .nan }
        let position = fraction * Double(sorted.count - 1)
        let lower = Int(position.rounded(.down))
        let upper = Swift.min(lower + 1, sorted.count - 1)
        return sorted[lower] + (sorted[upper] - sorted[lower]) * (position - Double(lower))
    }

    public static func median(_ values: [Double]) -> Double {
        percentile(values.sorted(), 0.5)
    }
}

/// Whether two samples differ, by a two-sided permutation test on the difference of their
/// medians. Exact (every split) when there are at most 20,000 splits, else that many random
/// splits from a fixed seed, so that the same samples always give the same p-value.
public enum PermutationTest {
    public struct Result: Sendable, Codable, Equatable {
        /// median(b) / median(a)
        public var ratio: Double
        public var pValue: Double
        public var permutations: Int
        public var exact: Bool
    }

    public static func compare(_ a: [Double], _ b: [Double], limit: Int = 20_000) -> Result? {
        guard !a.isEmpty, !b.isEmpty else { return nil }
        let pooled = a + b
        let observed = abs(Summary.median(b) - Summary.median(a))
        let ratio = Summary.median(b) / Summary.median(a)
        let total = pooled.count, size = a.count
        // Splits counted with a tolerance, so that ties in floating point count as extreme.
        let tolerance = 1e-12 * Swift.max(1, observed)
        var extreme = 0, count = 0
        if binomial(total, size) <= Double(limit) {
            var chosen = Array(0..<size)
            while true {
                let inA = Set(chosen)
                let groupA = chosen.map { pooled[$0] }
                let groupB = (0..<total).filter { !inA.contains($0) }.map { pooled[$0] }
                if abs(Summary.median(groupB) - Summary.median(groupA)) >= observed - tolerance { extreme += 1 }
                count += 1
                guard next(&chosen, total) else { break }
            }
            return Result(ratio: ratio, pValue: Double(extreme) / Double(count), permutations: count, exact: true)
        }
        var generator = SplitMix64(seed: 0x766d_6661_6374_6f72)
        var values = pooled
        for _ in 0..<limit {
            values.shuffle(using: &generator)
            let difference = abs(Summary.median(Array(values[size...])) - Summary.median(Array(values[..<size])))
            if difference >= observed - tolerance { extreme += 1 }
        }
        // The observed split counts as one of the permutations.
        return Result(ratio: ratio, pValue: Double(extreme + 1) / Double(limit + 1), permutations: limit, exact: false)
    }

    static func binomial(_ n: Int, _ k: Int) -> Double {
        var result = 1.0
        for i in 0..<Swift.min(k, n - k) { result = result * Double(n - i) / Double(i + 1) }
        return result
    }

    /// The next k-combination of 0..<n in lexicographic order; false after the last.
    static func next(_ combination: inout [Int], _ n: Int) -> Bool {
        let k = combination.count
        var i = k - 1
        while i >= 0, combination[i] == n - k + i { i -= 1 }
        guard i >= 0 else { return false }
        combination[i] += 1
        for j in (i + 1)..<k { combination[j] = combination[j - 1] + 1 }
        return true
    }
}

/// A small, seedable generator (SplitMix64), for resampling that gives the same answer every time.
public struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
