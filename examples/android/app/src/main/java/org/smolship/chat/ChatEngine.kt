package org.smolship.chat

import java.io.Closeable
import java.io.File
import org.pytorch.executorch.extension.llm.LlmCallback
import org.pytorch.executorch.extension.llm.LlmModule

/** A turn the engine cannot answer; the message is the sentence the user sees. */
class ChatException(message: String) : Exception(message)

/** A reply, and how many older messages were left out so that the prompt fits the context. */
data class Reply(val text: String, val droppedMessages: Int)

/**
 * A smolship ExecuTorch bundle behind ExecuTorch's LlmModule (the C++ text runner), one turn at a time.
 *
 * Every turn re-sends the conversation after resetContext(), trimmed by [fitHistory] to the newest
 * messages whose prompt leaves [MAX_NEW_TOKENS] of the bundle's context (chat_format.json's
 * max_seq_len) free, counted with [utf8TokenBound] since LlmModule has no tokenizer call. The runner
 * gets seqLen = min(context, prompt bound + MAX_NEW_TOKENS): a runner whose prefill covers the whole
 * context reads it as prompt + reply, smolship's chunked-prefill bundles as the reply length; the app
 * also stops by itself after MAX_NEW_TOKENS pieces, so the reply stays inside the cache either way.
 * The runner stops at the stop ids model.pte carries (`get_eos_ids`) and still passes the stop
 * token's text to the callback, so the callback drops it and calls stop(), as LlamaDemo does.
 */
class ChatEngine private constructor(
    private val format: ChatFormat,
    private val module: LlmModule,
) : Closeable {

    /** Streams the reply's pieces to [onPiece]; throws [ChatException] when there is no reply to show. */
    fun reply(history: List<ChatMessage>, onPiece: (String) -> Unit): Reply {
        val budget = format.maxSeqLen - MAX_NEW_TOKENS
        val fitted = fitHistory(history, budget) { utf8TokenBound(format.render(it)) }
            ?: throw ChatException(
                "This message is too long for the model's context (${format.maxSeqLen} tokens, " +
                    "$MAX_NEW_TOKENS kept for the reply): shorten it.",
            )
        val prompt = format.render(fitted)
        val seqLen = minOf(format.maxSeqLen, utf8TokenBound(prompt) + MAX_NEW_TOKENS)
        val collector = Collector(onPiece)
        module.resetContext()
        try {
            module.generate(prompt, seqLen, collector, ECHO)
        } catch (e: Exception) {
            throw ChatException("Generation failed: ${collector.error ?: e.message}")
        }
        if (collector.text.isEmpty() && !collector.stopped) {
            throw ChatException("The model returned no text${collector.error?.let { ": $it" } ?: "."}")
        }
        return Reply(collector.text.toString(), history.size - fitted.size)
    }

    /** Ends the running generate() early (safe from any thread; the reply so far is kept). */
    fun stop() {
        module.stop()
    }

    override fun close() {
        module.close()
    }

    /** One reply's text: drops the stop string and stops there, and stops after MAX_NEW_TOKENS pieces. */
    private inner class Collector(private val onPiece: (String) -> Unit) : LlmCallback {
        val text = StringBuilder()
        var stopped = false
        var error: String? = null
        private var pieces = 0

        override fun onResult(result: String) {
            if (stopped) return
            if (result in format.stopStrings) {
                stopped = true
                module.stop()
                return
            }
            text.append(result)
            onPiece(result)
            pieces += 1
            if (pieces >= MAX_NEW_TOKENS) module.stop()
        }

        override fun onError(errorCode: Int, message: String) {
            error = "$message (ExecuTorch error $errorCode)"
        }
    }

    companion object {
        /** Where the README's `adb push` puts the bundle's files (as LlamaDemo uses /data/local/tmp/llama). */
        const val BUNDLE_DIR = "/data/local/tmp/smolship"
        const val MODEL_FILE = "model.pte"
        const val TOKENIZER_FILE = "tokenizer.json"
        const val CHAT_FORMAT_FILE = "chat_format.json"

        // --- generation settings: the one place they are set (smolship's tests read them from here) ---
        /** Greedy decoding, as smolship's tests and the iOS app decode (LlmModule's constructor argument). */
        const val TEMPERATURE = 0.0f

        /** Off: with echo on the runner first hands back the prompt, which would show as the reply. */
        const val ECHO = false

        /** Tokens kept free for the reply when the history is trimmed, and the most pieces the app accepts. */
        const val MAX_NEW_TOKENS = 256

        /** Loads the bundle; on any failure the module is closed and the error thrown, so no engine exists. */
        fun open(bundleDir: File): ChatEngine {
            val format = ChatFormat.load(File(bundleDir, CHAT_FORMAT_FILE))
            val modelPath = File(bundleDir, MODEL_FILE).path
            val tokenizerPath = File(bundleDir, TOKENIZER_FILE).path
            val module = LlmModule(modelPath, tokenizerPath, TEMPERATURE)
            try {
                module.load()
            } catch (e: Exception) {
                module.close()
                throw e
            }
            return ChatEngine(format, module)
        }
    }
}
