package org.smolship.chat

import java.io.File
import org.json.JSONObject

/** One message of the conversation; role is "system", "user" or "assistant". */
data class ChatMessage(val role: String, val content: String)

/** Prefix and suffix that surround one message of a role. */
data class Turn(val prefix: String, val suffix: String)

/**
 * The bundle's chat_format.json: the model's chat template as plain strings, so the prompt is built by
 * concatenation (the ExecuTorch runner applies no template). smolship checked these strings against the
 * template; `render` follows the file's "rule". [maxSeqLen] is the bundle's context (KV-cache length):
 * prompt plus reply must fit in it, and LlmModule cannot tell the app.
 */
data class ChatFormat(
    val roles: Map<String, Turn>,
    val generationPrompt: String,
    val defaultSystem: String?,
    val bosText: String,
    val stopStrings: List<String>,
    val stopIds: List<Int>,
    val maxSeqLen: Int,
) {
    fun render(messages: List<ChatMessage>): String {
        val out = StringBuilder(bosText)
        if (defaultSystem != null && messages.firstOrNull()?.role != "system") {
            val system = roles.getValue("system")
            out.append(system.prefix).append(defaultSystem).append(system.suffix)
        }
        for (m in messages) {
            val turn = roles.getValue(m.role)
            out.append(turn.prefix).append(m.content).append(turn.suffix)
        }
        return out.append(generationPrompt).toString()
    }

    companion object {
        fun load(file: File): ChatFormat {
            val json = JSONObject(file.readText())
            require(json.has("max_seq_len") && !json.isNull("max_seq_len")) {
                "${file.name} has no max_seq_len (the bundle's context): re-export the bundle with a newer smolship"
            }
            val roles = json.getJSONObject("roles")
            val turns = roles.keys().asSequence().associateWith { role ->
                val t = roles.getJSONObject(role)
                Turn(t.getString("prefix"), t.getString("suffix"))
            }
            val stopStrings = json.getJSONArray("stop_strings")
            val stopIds = json.getJSONArray("stop_ids")
            return ChatFormat(
                roles = turns,
                generationPrompt = json.getString("generation_prompt"),
                defaultSystem = if (json.isNull("default_system")) null else json.getString("default_system"),
                bosText = json.getString("bos_text"),
                stopStrings = List(stopStrings.length()) { stopStrings.getString(it) },
                stopIds = List(stopIds.length()) { stopIds.getInt(it) },
                maxSeqLen = json.getInt("max_seq_len"),
            )
        }
    }
}
