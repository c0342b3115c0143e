"""`smolship inspect`: what a bundle (or a model) holds, with file integrity checked."""

from __future__ import annotations

from pathlib import Path

import typer

from smolship.cli.common import JsonOpt, out_console, print_json, table


def model_summary(spec: str | None) -> dict:
    from smolship.exporter.sources import load_model

    m = load_model(spec)
    return {"name": m.name, "source": m.source, "config": m.config.to_dict(), "n_params": m.config.n_params,
            "tokenizer": {"vocab_size": m.tokenizer.vocab_size, "bos_id": m.tokenizer.bos_id, "eos_id": m.tokenizer.eos_id,
                          "stop_ids": m.tokenizer.stop_ids, "stop_tokens": [m.tokenizer.token(i) for i in m.tokenizer.stop_ids],
                          "chat_template": bool(m.tokenizer.chat_template)}}


def inspect(
    what: str = typer.Argument(None, help="Bundle folder, or a model spec (default: the bundled model)."),
    json_out: bool = JsonOpt,
):
    """Show a bundle's manifest (files verified by sha256) or a model's summary."""
    from smolship.bundle import MANIFEST, read_manifest, verify_files

    if what and (Path(what) / MANIFEST).is_file():
        manifest = read_manifest(Path(what))
        bad = verify_files(Path(what), manifest)
        info = {**manifest, "integrity": {"ok": not bad, "mismatched": bad}}
        if json_out:
            print_json(info)
            return
        v = manifest.get("validation") or {}
        rows = [["target", manifest["target"]], ["recipe", manifest["quant"]["recipe"]],
                ["precision", manifest["quant"]["precision"]], ["source", manifest["source"]["ref"]],
                ["size_mb", manifest["size_mb"]], ["max_seq_len", manifest["max_seq_len"]],
                ["stop_ids", manifest["tokenizer"]["stop_ids"]], ["files", len(manifest["files"])],
                ["integrity", "ok" if not bad else f"MISMATCH: {bad}"]]
        rows += [[k, v[k]] for k in ("kld_mean", "top1_agreement", "max_abs_logit_diff", "decode_tok_s", "prefill_tok_s") if k in v]
        out_console.print(table(f"bundle {what}", ["key", "value"], rows))
        if bad:
            raise typer.Exit(1)
        return
    info = model_summary(what)
    if json_out:
        print_json(info)
        return
    c = info["config"]
    rows = [["name", info["name"]], ["source", info["source"]["ref"]], ["parameters", f"{info['n_params']:,}"],
            ["layers", c["num_layers"]], ["hidden", c["hidden_size"]], ["heads / kv heads", f"{c['num_heads']} / {c['num_kv_heads']}"],
            ["intermediate", c["intermediate_size"]], ["vocab", c["vocab_size"]], ["rope_theta", c["rope_theta"]],
            ["tied embeddings", c["tie_word_embeddings"]], ["stop tokens", ", ".join(info["tokenizer"]["stop_tokens"])],
            ["chat template", info["tokenizer"]["chat_template"]]]
    out_console.print(table("model", ["key", "value"], rows))
