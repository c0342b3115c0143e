import SwiftUI

@main
struct SmolshipChatApp: App {
    var body: some Scene {
        WindowGroup { ContentView() }
    }
}

@MainActor
final class ChatModel: ObservableObject {
    @Published var messages: [ChatMessage] = []
    @Published var status = "Pick a bundle"
    @Published var busy = false
    private var backend: ChatBackend?

    func load(coreML: Bool) {
        busy = true
        status = "Loading..."
        Task {
            do {
                let name = coreML ? BundleLocation.coreML : BundleLocation.executorch
                guard let url = BundleLocation.url(name), FileManager.default.fileExists(atPath: url.path) else {
                    throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: "Bundles/\(name)"])
                }
                if coreML {
                    backend = try await CoreMLBackend(bundle: url)
                } else {
                    backend = try ExecuTorchBackend(bundle: url)
                }
                status = backend?.name ?? ""
            } catch {
                status = "Cannot load: \(error.localizedDescription)"
            }
            busy = false
        }
    }

    func send(_ text: String) {
        guard let backend, !text.isEmpty else { return }
        messages.append(ChatMessage(role: "user", content: text))
        let history = messages
        messages.append(ChatMessage(role: "assistant", content: ""))
        busy = true
        Task.detached {
            let reply = try? await backend.reply(to: history) { piece in
                Task { @MainActor in self.messages[self.messages.count - 1].content += piece }
            }
            await MainActor.run {
                self.messages[self.messages.count - 1].content = (reply ?? "(generation failed)")
                    .trimmingCharacters(in: .whitespacesAndNewlines)
                self.busy = false
            }
        }
    }

    func stop() { backend?.stop() }
}
