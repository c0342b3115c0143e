"""`smolship chat`: talk to a model or a bundle through the shared generation loop (streams tokens)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from smolship.cli.common import ThreadsOpt, VerifyOpt, console, open_bundle, out_console
from smolship.generate import Sampling, generate_text


def open_chat(model_or_bundle: str | None, threads: int | None, verify: bool = True):
    """(runner, tokenizer, label) for a bundle folder (its real runtime, files verified first) or a model
    (PyTorch reference)."""
    from smolship.bundle import MANIFEST
    from smolship.exporter.tokenizer import ChatTokenizer

    if model_or_bundle and (Path(model_or_bundle) / MANIFEST).is_file():
        from smolship.targets import get_target

        bundle = Path(model_or_bundle)
        manifest = open_bundle(bundle, verify)
        target = get_target(manifest["target"])
        ok, why = target.can_run()
        if not ok:
            from smolship.errors import SmolshipError

            raise SmolshipError(f"This {manifest['target']} bundle cannot run here: {why}",
                                "Chat with the source model instead, or run this on a machine that has the runtime.")
        return target.load_runner(bundle, manifest, threads), ChatTokenizer.from_folder(bundle), bundle.name
    from smolship.exporter.sources import load_model
    from smolship.runner import ReferenceRunner

    source = load_model(model_or_bundle)
    return ReferenceRunner.from_source(source, threads=threads), source.tokenizer, f"{source.name} (PyTorch)"


def chat(
    model: Optional[str] = typer.Argument(None, help="Bundle folder, or a model (default: bundled SmolLM2-135M-Instruct)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Answer one prompt and exit (interactive without it)."),
    system: Optional[str] = typer.Option(None, "--system", help="System message (default: the template's own)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    threads: Optional[int] = ThreadsOpt,
    verify: bool = VerifyOpt,
):
    """Chat with MODEL using its own chat template and stop tokens."""
    from smolship.preflight import check_chat

    check_chat(max_new_tokens, temperature, top_p, threads)
    runner, tok, label = open_chat(model, threads, verify)
    sampling = Sampling(temperature, top_p, seed)
    messages: list[dict] = [{"role": "system", "content": system}] if system else []

    def answer(text: str) -> None:
        messages.append({"role": "user", "content": text})
        ids = tok.encode_chat(messages) if tok.chat_template else tok.encode(text)
        reply = generate_text(runner, tok, ids, max_new_tokens, sampling,
                              on_text=lambda piece: out_console.print(piece, end="", highlight=False, markup=False))
        out_console.print()
        messages.append({"role": "assistant", "content": reply})

    if prompt is not None:
        answer(prompt)
        return
    console.print(f"Chatting with {label}. Empty line or Ctrl-D to quit.")
    while True:
        try:
            text = input("> ").strip()
        except EOFError:
            break
        if not text:
            break
        answer(text)
