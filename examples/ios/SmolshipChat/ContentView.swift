import SwiftUI

struct ContentView: View {
    @StateObject private var chat = ChatModel()
    @State private var input = ""

    var body: some View {
        VStack(alignment: .leading) {
            HStack {
                Button("Core ML") { chat.load(coreML: true) }
                Button("ExecuTorch") { chat.load(coreML: false) }
                Spacer()
                Text(chat.status).font(.caption)
            }
            List(chat.messages) { m in
                Text("\(m.role): \(m.content)")
            }
            HStack {
                TextField("Message", text: $input)
                    .textFieldStyle(.roundedBorder)
                if chat.busy {
                    Button("Stop") { chat.stop() }
                } else {
                    Button("Send") {
                        chat.send(input.trimmingCharacters(in: .whitespacesAndNewlines))
                        input = ""
                    }
                    .disabled(!chat.ready)
                }
            }
        }
        .padding()
    }
}
