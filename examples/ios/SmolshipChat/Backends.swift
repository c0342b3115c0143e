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

protocol ChatBackend: AnyObject {
    var name: String { get }
    /// Streams the reply's text to `onText` and returns the whole reply.
    func reply(to history: [ChatMessage], onText: @escaping (String) -> Void) async throws -> String
    func stop()
}

let maxNewTokens = 256

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

    func reply(to history: [ChatMessage], onText: @escaping (String) -> Void) async throws -> String {
        let prompt = tokenizer.encode(text: format.render(history), addSpecialTokens: false)
        var config = GenerationConfig(maxNewTokens: maxNewTokens)
        config.maxLength = prompt.count + maxNewTokens
        config.eosTokenId = format.stopIds.first  // swift-transformers stops on one id: the turn end
        await model.resetState()
        var shown = ""
        let output = try await model.generate(config: config, tokens: prompt) { ids in
            let text = self.tokenizer.decode(tokens: Array(ids.dropFirst(prompt.count)), skipSpecialTokens: true)
            if text.count > shown.count {
                onText(String(text.dropFirst(shown.count)))
                shown = text
            }
        }
        return tokenizer.decode(tokens: Array(output.dropFirst(prompt.count)), skipSpecialTokens: true)
    }

    func stop() {}  // swift-transformers' generate loop has no cancel hook
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

    func reply(to history: [ChatMessage], onText: @escaping (String) -> Void) async throws -> String {
        var reply = ""
        defer { runner.reset() }  // every turn re-sends the whole conversation
        // The runner stops at the program's stop ids (get_eos_ids) and still hands over the stop
        // token's text: drop it, as etLLM does.
        try runner.generate(format.render(history), Config {
            $0.sequenceLength = 768
        }) { token in
            if self.format.stopStrings.contains(token) {
                self.runner.stop()
                return
            }
            reply += token
            onText(token)
        }
        return reply
    }

    func stop() { runner.stop() }
}
