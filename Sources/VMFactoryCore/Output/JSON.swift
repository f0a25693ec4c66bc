import Foundation

/// vmfactory's one JSON form: pretty, keys sorted and slashes left alone, so that equal
/// values give equal bytes (manifests, reports, `--format json`).
public enum JSON {
    public static func encode<T: Encodable>(_ value: T) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        do {
            return try encoder.encode(value)
        } catch {
            throw VMFactoryError(
                .internalError, "cannot encode \(T.self) as JSON: \(error)",
                hint: "this is a fault in vmfactory; run again without --format json, and report the command line"
            )
        }
    }

    public static func encodeText<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try encode(value), as: UTF8.self)
    }

    /// Decodes `data`; `what` names it in the error ("the build manifest /path/manifest.json").
    public static func decode<T: Decodable>(_ type: T.Type, from data: Data, what: String, hint: String? = nil) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: data)
        } catch {
            throw VMFactoryError(.io, "\(what) is not valid: \(error)", hint: hint)
        }
    }
}
