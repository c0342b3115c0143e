package org.smolship.chat

/**
 * The newest part of [messages] whose prompt fits in [budget] tokens, or null when even the last user
 * message alone does not fit.
 *
 * Policy (the iOS app's History.swift is the same): a leading system message is always kept; of the
 * rest, the longest tail that starts at a user message and whose prompt [count]s to at most [budget]
 * tokens. Starting at a user message keeps the template's turn order (no reply without its question).
 * Pure: it depends only on its arguments, so it reads (and tests) without a runtime.
 */
fun fitHistory(
    messages: List<ChatMessage>,
    budget: Int,
    count: (List<ChatMessage>) -> Int,
): List<ChatMessage>? {
    val system = if (messages.firstOrNull()?.role == "system") messages.take(1) else emptyList()
    val rest = messages.drop(system.size)
    for (start in rest.indices) {
        if (rest[start].role != "user") continue
        val candidate = system + rest.drop(start)
        if (count(candidate) <= budget) return candidate
    }
    return null
}

/**
 * An upper bound on the number of tokens of [text] for a byte-level BPE tokenizer (SmolLM2's): every
 * token covers at least one UTF-8 byte. LlmModule exposes no tokenizer, so the app counts with this
 * bound; it over-counts English about 4x, which trims history earlier than needed but never too late.
 */
fun utf8TokenBound(text: String): Int = text.toByteArray(Charsets.UTF_8).size
