package org.smolship.chat

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.lazy.LazyColumn
import androidx.compose.foundation.lazy.items
import androidx.compose.material3.Button
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateListOf
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp
import java.io.File
import java.util.concurrent.Executors

/** Role of a message that shows an error: displayed, never sent to the model. */
const val ERROR_ROLE = "error"

class MainActivity : ComponentActivity() {
    private val worker = Executors.newSingleThreadExecutor()

    /** Set only after ChatEngine.open() succeeded: a bundle that failed to load leaves no engine. */
    @Volatile private var engine: ChatEngine? = null

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val messages = mutableStateListOf<ChatMessage>()
        var status by mutableStateOf("Loading model from ${ChatEngine.BUNDLE_DIR} ...")
        var busy by mutableStateOf(true)
        var ready by mutableStateOf(false)

        worker.execute {
            status = try {
                engine = ChatEngine.open(File(ChatEngine.BUNDLE_DIR))
                ready = true
                "Ready"
            } catch (t: Throwable) {
                "Cannot load the bundle from ${ChatEngine.BUNDLE_DIR}: ${t.message}"
            }
            busy = false
        }

        setContent {
            MaterialTheme {
                ChatScreen(messages, status, busy, ready, onStop = { engine?.stop() }) { text ->
                    val e = engine ?: return@ChatScreen
                    messages.add(ChatMessage("user", text))
                    val history = messages.filter { it.role != ERROR_ROLE }
                    messages.add(ChatMessage("assistant", ""))
                    busy = true
                    worker.execute {
                        val result = runCatching {
                            e.reply(history) { piece ->
                                runOnUiThread {
                                    val last = messages.last()
                                    messages[messages.lastIndex] = last.copy(content = last.content + piece)
                                }
                            }
                        }
                        // Posted after every piece (one worker thread, one UI queue): the final text replaces them.
                        runOnUiThread {
                            result.onSuccess { reply ->
                                messages[messages.lastIndex] = ChatMessage("assistant", reply.text.trim())
                                status = if (reply.droppedMessages > 0) {
                                    "Left out the ${reply.droppedMessages} oldest messages to fit the model's context"
                                } else {
                                    "Ready"
                                }
                            }.onFailure { t ->
                                messages[messages.lastIndex] = ChatMessage(ERROR_ROLE, t.message ?: t.toString())
                                status = "Ready"
                            }
                            busy = false
                        }
                    }
                }
            }
        }
    }

    override fun onDestroy() {
        val e = engine
        engine = null
        e?.stop()
        worker.execute { e?.close() }  // after a running reply returns: close() refuses while generate() runs
        worker.shutdown()
        super.onDestroy()
    }
}

@Composable
fun ChatScreen(
    messages: List<ChatMessage>,
    status: String,
    busy: Boolean,
    ready: Boolean,
    onStop: () -> Unit,
    onSend: (String) -> Unit,
) {
    var input by remember { mutableStateOf("") }
    Column(Modifier.fillMaxSize().padding(12.dp)) {
        Text(status, style = MaterialTheme.typography.labelMedium)
        LazyColumn(Modifier.weight(1f).fillMaxWidth()) {
            items(messages) { m ->
                Text("${m.role}: ${m.content}", Modifier.padding(vertical = 6.dp))
            }
        }
        Row(Modifier.fillMaxWidth()) {
            OutlinedTextField(value = input, onValueChange = { input = it }, modifier = Modifier.weight(1f))
            if (busy) {
                Button(onClick = onStop, Modifier.padding(start = 8.dp)) { Text("Stop") }
            } else {
                Button(
                    onClick = { onSend(input.trim()); input = "" },
                    enabled = ready && input.isNotBlank(),
                    modifier = Modifier.padding(start = 8.dp),
                ) { Text("Send") }
            }
        }
    }
}
