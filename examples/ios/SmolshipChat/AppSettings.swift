/// The app's generation settings, in one place: both backends read them from here (and smolship's tests
/// read them from this file to drive ExecuTorch's runner the way the app does).
enum AppSettings {
    /// Tokens kept free for the reply when the history is trimmed, and the most tokens a reply may have.
    static let maxNewTokens = 256

    /// Greedy decoding, as the Android app and smolship's tests decode (ExecuTorch's Config defaults to 0.8).
    static let temperature = 0.0

    /// swift-transformers samples only when this is true (GenerationConfig.doSample); false is greedy.
    static let doSample = false

    /// Off: with echo on (ExecuTorch's default) the runner first hands back the prompt, shown as the reply.
    static let echo = false
}
