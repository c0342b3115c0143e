import CoreML
import ExecuTorchLLM
import Foundation
import Generation
import Models
import Tokenizers

/// Where the app finds the smolship bundles: the `Bundles` folder reference (see README).
enum BundleLocation {
    static let coreML = "coreml-w4"
    static let executorch = "executorch-8da4w"

    static func url(_ name: String) -> URL? {
        Bundle.main.url(forResource: "Bundles", withExtension: nil)?.appendingPathComponent(name)
    }
}

/// A reply, and how many older messages were left out so that the prompt fits the context.
struct Reply {
    let text: String
    let droppedMessages: Int
}

/// Why a turn has no reply, in words for the user.
enum ChatError: LocalizedError {
    case tooLong(context: Int)
    case failed(String)
    case noText
    case badBundle(String)

    var errorDescription: String? {
        switch self {
        case .tooLong(let context):
            return "This message is too long for the model's context (\(context) tokens, "
                + "\(AppSettings.maxNewTokens) kept for the reply): shorten it."
        case .failed(let why):
            return "Generation failed: \(why)"
        case .noText:
            return "The model returned no text."
        case .badBundle(let why):
            return why
        }
    }
}

protocol ChatBackend: AnyObject {
    var name: String { get }
    /// Reports the reply so far to `onText` (the whole text each time, never a piece, so a late or
    /// reordered update cannot duplicate text) and returns the final reply.
    func reply(to history: [ChatMessage], onText: @escaping (String) -> Void) async throws -> Reply
    func stop()
}

/// The Core ML bundle through swift-transformers' LanguageModel, with the tokenizer read from the
/// bundle folder (config.json, tokenizer.json, tokenizer_config.json), so nothing comes from the hub.
final class CoreMLBackend: ChatBackend {
    let name = "Core ML (swift-transformers)"
    private let model: LanguageModel
    private let tokenizer: Tokenizer
    private let format: ChatFormat

    init(bundle: URL) async throws {
        format = try ChatFormat.load(from: bundle)
        tokenizer = try await AutoTokenizer.from(modelFolder: bundle)
        // The folder reference ships the .mlpackage as is: compile it once on the device, as swift-chat does.
        let compiled = try await MLModel.compileModel(at: bundle.appendingPathComponent("model.mlpackage"))
        model = try LanguageModel.loadCompiled(url: compiled, computeUnits: .cpuAndGPU, tokenizer: tokenizer)
    }

    func reply(to history: [ChatMessage], onText: @escaping (String) -> Void) async throws -> Reply {
        let context = model.maxContextLength  // the Core ML model's inputIds range: the bundle's max_seq_len
        let count = { (messages: [ChatMessage]) in self.encode(messages).count }
        guard let fitted = fitHistory(history, budget: context - AppSettings.maxNewTokens, count: count) else {
            throw ChatError.tooLong(context: context)
        }
        let prompt = encode(fitted)
        var config = GenerationConfig(
            maxNewTokens: AppSettings.maxNewTokens,
            doSample: AppSettings.doSample,
            temperature: Float(AppSettings.temperature)
        )
        config.maxLength = generationLength(promptTokens: prompt.count, context: context)
        config.eosTokenId = format.stopIds.first  // swift-transformers stops on one id: the turn end
        await model.resetState()
        let output = try await model.generate(config: config, tokens: prompt) { ids in
            onText(self.decodeReply(ids, promptCount: prompt.count))
        }
        return Reply(text: decodeReply(output, promptCount: prompt.count), droppedMessages: history.count - fitted.count)
    }

    func stop() {}  // swift-transformers' generate loop has no cancel hook

    private func encode(_ messages: [ChatMessage]) -> [Int] {
        tokenizer.encode(text: format.render(messages), addSpecialTokens: false)
    }

    private func decodeReply(_ ids: [Int], promptCount: Int) -> String {
        tokenizer.decode(tokens: Array(ids.dropFirst(promptCount)), skipSpecialTokens: true)
    }
}

/// The ExecuTorch bundle through ExecuTorch's TextRunner (the C++ LLM runner, as in etLLM).
final class ExecuTorchBackend: ChatBackend {
    let name = "ExecuTorch (TextRunner)"
    private let runner: TextRunner
    private let format: ChatFormat

    init(bundle: URL) throws {
        format = try ChatFormat.load(from: bundle)
        runner = TextRunner(
            modelPath: bundle.appendingPathComponent("model.pte").path,
            tokenizerPath: bundle.appendingPathComponent("tokenizer.json").path
        )
        try runner.load()
    }

    /// Every turn re-sends the conversation, trimmed to what leaves `maxNewTokens` of the bundle's
    /// context free. With `maximumNewTokens` set, the runner generates at most that many tokens whether
    /// it reads `sequenceLength` as the total or (chunked prefill, smolship's default) per call.
    func reply(to history: [ChatMessage], onText: @escaping (String) -> Void) async throws -> Reply {
        let context = format.maxSeqLen
        let count = { (messages: [ChatMessage]) in utf8TokenBound(self.format.render(messages)) }
        guard let fitted = fitHistory(history, budget: context - AppSettings.maxNewTokens, count: count) else {
            throw ChatError.tooLong(context: context)
        }
        var reply = ""
        var stopped = false
        defer { runner.reset() }
        do {
            // The runner stops at the program's stop ids (get_eos_ids) and still hands over the stop
            // token's text: drop it and stop, as etLLM does.
            try runner.generate(format.render(fitted), Config {
                $0.isEchoEnabled = AppSettings.echo
                $0.temperature = AppSettings.temperature
                $0.maximumNewTokens = AppSettings.maxNewTokens
                $0.sequenceLength = context
            }) { token in
                if stopped {
                    return
                }
                if self.format.stopStrings.contains(token) {
                    stopped = true
                    self.runner.stop()
                    return
                }
                reply += token
                onText(reply)
            }
        } catch {
            throw ChatError.failed(error.localizedDescription)
        }
        if reply.isEmpty && !stopped {
            throw ChatError.noText
        }
        return Reply(text: reply, droppedMessages: history.count - fitted.count)
    }

    func stop() { runner.stop() }
}
