import Foundation

/// One message of the conversation; role is "system", "user" or "assistant".
struct ChatMessage: Identifiable {
    let id = UUID()
    let role: String
    var content: String
}

/// The bundle's chat_format.json: the chat template as plain strings (checked against the template
/// by smolship), so a prompt is built by concatenation, following the file's "rule". `maxSeqLen` is the
/// bundle's context (KV-cache length): prompt plus reply must fit in it, and TextRunner cannot tell the app.
struct ChatFormat: Decodable {
    struct Turn: Decodable {
        let prefix: String
        let suffix: String

        enum CodingKeys: String, CodingKey {
            case prefix = "prefix"
            case suffix = "suffix"
        }
    }

    let roles: [String: Turn]
    let generationPrompt: String
    let defaultSystem: String?
    let bosText: String
    let stopStrings: [String]
    let stopIds: [Int]  // the turn end's id first
    let maxSeqLen: Int

    enum CodingKeys: String, CodingKey {
        case roles = "roles"
        case generationPrompt = "generation_prompt"
        case defaultSystem = "default_system"
        case bosText = "bos_text"
        case stopStrings = "stop_strings"
        case stopIds = "stop_ids"
        case maxSeqLen = "max_seq_len"
    }

    static let fileName = "chat_format.json"

    static func load(from bundle: URL) throws -> ChatFormat {
        let data = try Data(contentsOf: bundle.appendingPathComponent(fileName))
        do {
            return try JSONDecoder().decode(ChatFormat.self, from: data)
        } catch DecodingError.keyNotFound(let key, _) {
            throw ChatError.badBundle("\(fileName) has no \(key.stringValue): re-export the bundle with a newer smolship")
        } catch DecodingError.valueNotFound(_, let context) {
            let key = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw ChatError.badBundle("\(fileName) has no value for \(key): re-export the bundle with a newer smolship")
        }
    }

    func render(_ messages: [ChatMessage]) -> String {
        var out = bosText
        if let system = defaultSystem, messages.first?.role != "system", let turn = roles["system"] {
            out += turn.prefix + system + turn.suffix
        }
        for m in messages {
            guard let turn = roles[m.role] else { continue }
            out += turn.prefix + m.content + turn.suffix
        }
        return out + generationPrompt
    }
}
