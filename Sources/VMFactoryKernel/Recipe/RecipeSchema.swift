import Foundation
import VMFactoryArchive
import VMFactoryCore

// The recipe file as written. Every type rejects keys it does not know, so that a typo
// such as `fragment:` for `fragments:` is an error at its line instead of silently ignored.
// Values are checked later by `RecipeLoader`, which knows where each one stands in the file.

/// A mapping of the recipe that may hold only the keys its `CodingKeys` lists: decoding
/// checks the keys, then hands the container to `init(strict:)`.
protocol StrictDocument: Decodable {
    associatedtype CodingKeys: CodingKey & CaseIterable
    init(strict container: KeyedDecodingContainer<CodingKeys>) throws
}

extension StrictDocument {
    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        try self.init(strict: try decoder.container(keyedBy: CodingKeys.self))
    }
}

struct RecipeDocument: StrictDocument {
    var description: String
    var kernel: KernelDocument
    /// Target name to its settings, in the order written.
    var targets: OrderedMapping<TargetDocument>
    /// Seconds since 1970 that stand for "when" in every reproducible output.
    var sourceDateEpoch: Int?
    var initrd: InitrdDocument?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case description, kernel, targets, initrd
        case sourceDateEpoch = "source-date-epoch"
    }

    init(strict container: KeyedDecodingContainer<CodingKeys>) throws {
        description = try container.decode(String.self, forKey: .description)
        kernel = try container.decode(KernelDocument.self, forKey: .kernel)
        targets = try container.decode(OrderedMapping<TargetDocument>.self, forKey: .targets)
        sourceDateEpoch = try container.decodeIfPresent(Int.self, forKey: .sourceDateEpoch)
        initrd = try container.decodeIfPresent(InitrdDocument.self, forKey: .initrd)
    }
}

struct InitrdDocument: StrictDocument {
    var compression: String?
    var hostname: String?
    var entrypoint: [String]?
    var env: OrderedMapping<String>?
    var files: [InitrdFileDocument]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case compression, hostname, entrypoint, env, files
    }

    init(strict container: KeyedDecodingContainer<CodingKeys>) throws {
        compression = try container.decodeIfPresent(String.self, forKey: .compression)
        hostname = try container.decodeIfPresent(String.self, forKey: .hostname)
        entrypoint = try container.decodeIfPresent([String].self, forKey: .entrypoint)
        env = try container.decodeIfPresent(OrderedMapping<String>.self, forKey: .env)
        files = try container.decodeIfPresent([InitrdFileDocument].self, forKey: .files) ?? []
    }
}

struct InitrdFileDocument: StrictDocument {
    var source: String
    var destination: String
    /// Octal digits, as a string ("0755") or a number written in octal digits (755).
    var mode: String?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case source, destination, mode
    }

    init(strict container: KeyedDecodingContainer<CodingKeys>) throws {
        source = try container.decode(String.self, forKey: .source)
        destination = try container.decode(String.self, forKey: .destination)
        if let number = try? container.decodeIfPresent(Int.self, forKey: .mode) {
            mode = String(number)
        } else {
            mode = try container.decodeIfPresent(String.self, forKey: .mode)
        }
    }
}

/// A mapping from names to values, in the order written.
struct OrderedMapping<Value: Decodable>: Decodable {
    var entries: [(key: String, value: Value)]

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: AnyCodingKey.self)
        entries = try container.allKeys.map { key in
            (key.stringValue, try container.decode(Value.self, forKey: key))
        }
    }
}

struct KernelDocument: StrictDocument {
    var version: String
    var source: SourceDocument
    var config: ConfigDocument
    var patches: PatchesDocument?
    var cmdline: String?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case version, source, config, patches, cmdline
    }

    init(strict container: KeyedDecodingContainer<CodingKeys>) throws {
        version = try container.decode(String.self, forKey: .version)
        source = try container.decode(SourceDocument.self, forKey: .source)
        config = try container.decode(ConfigDocument.self, forKey: .config)
        patches = try container.decodeIfPresent(PatchesDocument.self, forKey: .patches)
        cmdline = try container.decodeIfPresent(String.self, forKey: .cmdline)
    }
}

struct SourceDocument: StrictDocument {
    var sha256: String
    var file: String?
    var apt: AptDocument?
    var urls: [String]
    var paths: [String]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case sha256, file, apt, urls, paths
    }

    init(strict container: KeyedDecodingContainer<CodingKeys>) throws {
        sha256 = try container.decode(String.self, forKey: .sha256)
        file = try container.decodeIfPresent(String.self, forKey: .file)
        apt = try container.decodeIfPresent(AptDocument.self, forKey: .apt)
        urls = try container.decodeIfPresent([String].self, forKey: .urls) ?? []
        paths = try container.decodeIfPresent([String].self, forKey: .paths) ?? []
    }
}

struct AptDocument: StrictDocument {
    var package: String
    var version: String
    var member: String

    enum CodingKeys: String, CodingKey, CaseIterable {
        case package, version, member
    }

    init(strict container: KeyedDecodingContainer<CodingKeys>) throws {
        package = try container.decode(String.self, forKey: .package)
        version = try container.decode(String.self, forKey: .version)
        member = try container.decode(String.self, forKey: .member)
    }
}

struct ConfigDocument: StrictDocument {
    /// `tinyconfig`, `allnoconfig`, `defconfig`, or `{file: path}`.
    var base: BaseDocument
    var fragments: [String]
    var fragmentDirs: [String]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case base, fragments
        case fragmentDirs = "fragment-dirs"
    }

    init(strict container: KeyedDecodingContainer<CodingKeys>) throws {
        base = try container.decode(BaseDocument.self, forKey: .base)
        fragments = try container.decodeIfPresent([String].self, forKey: .fragments) ?? []
        fragmentDirs = try container.decodeIfPresent([String].self, forKey: .fragmentDirs) ?? []
    }
}

enum BaseDocument: Decodable {
    case target(String)
    case file(String)

    enum CodingKeys: String, CodingKey, CaseIterable {
        case file
    }

    init(from decoder: any Decoder) throws {
        if let single = try? decoder.singleValueContainer(), let name = try? single.decode(String.self) {
            self = .target(name)
            return
        }
        guard (try? decoder.container(keyedBy: AnyCodingKey.self)) != nil else {
            throw RecipeSchemaError(
                path: decoder.codingPath,
                message: "expected a base config name (tinyconfig, allnoconfig, defconfig) or a mapping {file: PATH}"
            )
        }
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self = .file(try container.decode(String.self, forKey: .file))
    }
}

struct PatchesDocument: StrictDocument {
    var series: String
    var dirs: [String]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case series, dirs
    }

    init(strict container: KeyedDecodingContainer<CodingKeys>) throws {
        series = try container.decode(String.self, forKey: .series)
        dirs = try container.decodeIfPresent([String].self, forKey: .dirs) ?? []
    }
}

struct TargetDocument: Decodable {
    var cmdline: String?
    var fragments: [String]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case cmdline, fragments
    }

    init() {
        cmdline = nil
        fragments = []
    }

    init(from decoder: any Decoder) throws {
        if let single = try? decoder.singleValueContainer(), single.decodeNil() {
            self = TargetDocument()
            return
        }
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.cmdline = try container.decodeIfPresent(String.self, forKey: .cmdline)
        self.fragments = try container.decodeIfPresent([String].self, forKey: .fragments) ?? []
    }
}

/// A problem found while decoding, with the coding path of the value (or key) at fault.
struct RecipeSchemaError: Error {
    var path: [any CodingKey]
    var message: String
    /// The error is about a key itself (an unknown key), not its value.
    var pointsAtKey = false
}

struct AnyCodingKey: CodingKey {
    var stringValue: String
    var intValue: Int?

    init(stringValue: String) {
        self.stringValue = stringValue
        self.intValue = nil
    }

    init(intValue: Int) {
        self.stringValue = String(intValue)
        self.intValue = intValue
    }
}

extension Decoder {
    /// Throws for the first key of the current mapping that `Keys` does not list.
    func rejectUnknownKeys<Keys: CodingKey & CaseIterable>(_ keys: Keys.Type) throws {
        guard let container = try? container(keyedBy: AnyCodingKey.self) else { return }
        let known = Keys.allCases.map(\.stringValue)
        for key in container.allKeys where !known.contains(key.stringValue) {
            throw RecipeSchemaError(
                path: codingPath + [key],
                message: "unknown key '\(key.stringValue)' (expected one of: \(known.joined(separator: ", ")))",
                pointsAtKey: true
            )
        }
    }
}
