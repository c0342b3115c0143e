import SwiftUI

@main
struct SmolshipChatApp: App {
    var body: some Scene {
        WindowGroup { ContentView() }
    }
}

extension ChatMessage {
    /// Role of a message that shows an error: displayed, never sent to the model.
    static let errorRole = "error"
}

@MainActor
final class ChatModel: ObservableObject {
    @Published var messages: [ChatMessage] = []
    @Published var status = "Pick a bundle"
    @Published var busy = false
    @Published var ready = false
    private var backend: ChatBackend?
    /// The reply being streamed; updates for any other (finished) reply are ignored.
    private var streaming: UUID?

    func load(coreML: Bool) {
        backend = nil  // a bundle that fails to load must not leave the previous or a half-made backend
        ready = false
        busy = true
        status = "Loading..."
        Task {
            do {
                let name = coreML ? BundleLocation.coreML : BundleLocation.executorch
                guard let url = BundleLocation.url(name), FileManager.default.fileExists(atPath: url.path) else {
                    throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: "Bundles/\(name)"])
                }
                let loaded: ChatBackend
                if coreML {
                    loaded = try await CoreMLBackend(bundle: url)
                } else {
                    loaded = try ExecuTorchBackend(bundle: url)
                }
                backend = loaded
                ready = true
                status = loaded.name
            } catch {
                status = "Cannot load: \(error.localizedDescription)"
            }
            busy = false
        }
    }

    func send(_ text: String) {
        guard let backend, !text.isEmpty else { return }
        messages.append(ChatMessage(role: "user", content: text))
        let history = messages.filter { $0.role != ChatMessage.errorRole }
        let placeholder = ChatMessage(role: "assistant", content: "")
        messages.append(placeholder)
        let turn = placeholder.id
        streaming = turn
        busy = true
        Task.detached {
            do {
                let reply = try await backend.reply(to: history) { soFar in
                    Task { @MainActor in self.show(soFar, in: turn) }
                }
                let text = reply.text.trimmingCharacters(in: .whitespacesAndNewlines)
                await self.finish(turn, with: ChatMessage(role: "assistant", content: text), dropped: reply.droppedMessages)
            } catch {
                await self.finish(turn, with: ChatMessage(role: ChatMessage.errorRole, content: error.localizedDescription), dropped: 0)
            }
        }
    }

    func stop() { backend?.stop() }

    /// A streamed update: applied only while its turn streams and when it is longer than what is shown.
    private func show(_ soFar: String, in turn: UUID) {
        guard streaming == turn, let i = messages.firstIndex(where: { $0.id == turn }),
              soFar.count > messages[i].content.count else { return }
        messages[i].content = soFar
    }

    /// The final text replaces whatever was streamed, and ends the turn: later updates are ignored.
    private func finish(_ turn: UUID, with message: ChatMessage, dropped: Int) {
        streaming = nil
        if let i = messages.firstIndex(where: { $0.id == turn }) {
            messages[i] = message
        }
        if dropped > 0 {
            status = "Left out the \(dropped) oldest messages to fit the model's context"
        }
        busy = false
    }
}
