/// The newest part of `messages` whose prompt fits in `budget` tokens, or nil when even the last user
/// message alone does not fit.
///
/// Policy (the Android app's History.kt is the same): a leading system message is always kept; of the
/// rest, the longest tail that starts at a user message and whose prompt `count`s to at most `budget`
/// tokens. Starting at a user message keeps the template's turn order (no reply without its question).
/// Pure: it depends only on its arguments, so it reads (and tests) without a runtime.
func fitHistory(_ messages: [ChatMessage], budget: Int, count: ([ChatMessage]) -> Int) -> [ChatMessage]? {
    let system = messages.first?.role == "system" ? [messages[0]] : []
    let rest = messages.dropFirst(system.count)
    for start in rest.indices where rest[start].role == "user" {
        let candidate = system + rest[start...]
        if count(candidate) <= budget {
            return candidate
        }
    }
    return nil
}

/// An upper bound on the tokens of `text` for a byte-level BPE tokenizer (SmolLM2's): every token covers
/// at least one UTF-8 byte. ExecuTorch's TextRunner exposes no tokenizer, so its backend counts with this
/// bound, as the Android app does; it over-counts English about 4x, trimming early but never too late.
func utf8TokenBound(_ text: String) -> Int {
    text.utf8.count
}

/// The total length (prompt + reply) to ask swift-transformers for, never past the model's context:
/// its generate loop calls `try! model.prediction`, which crashes beyond the Core ML model's range.
func generationLength(promptTokens: Int, context: Int) -> Int {
    min(promptTokens + AppSettings.maxNewTokens, context)
}
