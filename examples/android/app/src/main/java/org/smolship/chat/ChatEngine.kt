package org.smolship.chat

import java.io.File
import org.pytorch.executorch.extension.llm.LlmCallback
import org.pytorch.executorch.extension.llm.LlmModule

/**
 * A smolship ExecuTorch bundle behind ExecuTorch's LlmModule (the C++ text runner).
 *
 * The runner stops by itself at the stop ids the bundle's model.pte carries (`get_eos_ids`); it still
 * passes the stop token's text to the callback, so `onResult` drops it and calls stop(), as LlamaDemo does.
 */
class ChatEngine(bundleDir: File) {
    private val format = ChatFormat.load(File(bundleDir, CHAT_FORMAT_FILE))
    private val module = LlmModule(
        File(bundleDir, MODEL_FILE).path,
        File(bundleDir, TOKENIZER_FILE).path,
        TEMPERATURE,
    )

    fun load(): Int = module.load()

    /** Streams the reply to [onPiece] and returns it. Every turn re-sends the whole conversation. */
    fun reply(history: List<ChatMessage>, onPiece: (String) -> Unit): String {
        val reply = StringBuilder()
        module.resetContext()
        module.generate(format.render(history), SEQ_LEN, object : LlmCallback {
            override fun onResult(result: String) {
                if (result in format.stopStrings) {
                    module.stop()
                    return
                }
                reply.append(result)
                onPiece(result)
            }

            override fun onStats(stats: String) {}
        }, false)
        return reply.toString()
    }

    fun stop() = module.stop()

    companion object {
        /** Where the README's `adb push` puts the bundle's files (as LlamaDemo uses /data/local/tmp/llama). */
        const val BUNDLE_DIR = "/data/local/tmp/smolship"
        const val MODEL_FILE = "model.pte"
        const val TOKENIZER_FILE = "tokenizer.json"
        const val CHAT_FORMAT_FILE = "chat_format.json"

        /** Prompt + reply tokens per turn, LlamaDemo's text-model value; smolship's default context is 2048. */
        const val SEQ_LEN = 768
        const val TEMPERATURE = 0.0f
    }
}
