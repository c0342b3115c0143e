"""`smolship inspect`: what a bundle (or a model) holds, with file integrity checked.

`smolship inspect BUNDLE --verify` is the CI form: it only checks every file's sha256 against
manifest.json and exits 0 (all match), 1 (a file changed or is missing) or 2 (not a bundle, bad usage).
"""

from __future__ import annotations

from pathlib import Path

import typer

from smolship.cli.common import JsonOpt, out_console, print_json, table
from smolship.cli.report_view import shown


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
    verify: bool = typer.Option(False, "--verify", help="Only check the bundle's files against manifest.json; "
                                "exit 0 if all match, 1 if any changed, 2 on bad usage (for CI scripts)."),
):
    """Show a bundle's manifest (files verified by sha256) or a model's summary."""
    from smolship.bundle import MANIFEST, read_manifest, verify_files
    from smolship.errors import SmolshipError

    if verify and not (what and (Path(what) / MANIFEST).is_file()):
        raise SmolshipError(f"--verify needs a bundle folder, and '{what}' has no {MANIFEST}.",
                            "Pass a folder written by `smolship export`, e.g. out/gguf-q8_0.")
    if what and (Path(what) / MANIFEST).is_file():
        manifest = read_manifest(Path(what))
        bad = verify_files(Path(what), manifest)
        if verify:
            if json_out:
                print_json({"bundle": what, "ok": not bad, "mismatched": bad, "files": len(manifest["files"])})
            else:
                out_console.print(f"{what}: {len(manifest['files'])} files, " + (
                    "all match manifest.json" if not bad else f"MISMATCH: {', '.join(bad)}"), highlight=False)
            raise typer.Exit(1 if bad else 0)
        info = {**manifest, "integrity": {"ok": not bad, "mismatched": bad}}
        if json_out:
            print_json(info)
            if bad:
                raise typer.Exit(1)
            return
        v = manifest.get("validation") or {}
        rows = [["target", manifest["target"]], ["recipe", manifest["quant"]["recipe"]],
                ["precision", manifest["quant"]["precision"]], ["source", manifest["source"]["ref"]],
                ["size_mb", manifest["size_mb"]], ["max_seq_len", manifest["max_seq_len"]],
                ["stop_ids", manifest["tokenizer"]["stop_ids"]], ["files", len(manifest["files"])],
                ["integrity", "ok" if not bad else f"MISMATCH: {bad}"]]
        rows += [[k, shown(v, k)] for k in ("kld_mean", "top1_agreement", "max_abs_logit_diff", "decode_tok_s", "prefill_tok_s")
                 if k in v]
        if manifest.get("config"):  # what the cache costs at this bundle's context (issue 29)
            from smolship.exporter.config import LlamaConfig
            from smolship.preflight import kv_cache_text

            rows.append(["KV cache", kv_cache_text(LlamaConfig.from_dict(manifest["config"]), manifest["max_seq_len"])])
        lc = v.get("long_context") or {}
        if "kld_mean_late" in lc:
            rows.append(["long context kld early / late", f"{lc['kld_mean_early']:.4g} / {lc['kld_mean_late']:.4g} "
                                                          f"({lc['positions']} positions)"])
        if v.get("full_context_peak_rss_mb") is not None:
            rows.append(["peak RSS, cache full", f"{v['full_context_peak_rss_mb']} MB"])
        out_console.print(table(f"bundle {what}", ["key", "value"], rows))
        if bad:
            raise typer.Exit(1)
        return
    info = model_summary(what)
    if json_out:
        print_json(info)
        return
    from smolship.exporter.config import LlamaConfig
    from smolship.preflight import kv_cache_text

    c = info["config"]
    rows = [["name", info["name"]], ["source", info["source"]["ref"]], ["parameters", f"{info['n_params']:,}"],
            ["layers", c["num_layers"]], ["hidden", c["hidden_size"]], ["heads / kv heads", f"{c['num_heads']} / {c['num_kv_heads']}"],
            ["intermediate", c["intermediate_size"]], ["vocab", c["vocab_size"]], ["rope_theta", c["rope_theta"]],
            ["tied embeddings", c["tie_word_embeddings"]], ["stop tokens", ", ".join(info["tokenizer"]["stop_tokens"])],
            ["chat template", info["tokenizer"]["chat_template"]], ["KV cache", kv_cache_text(LlamaConfig.from_dict(c))]]
    out_console.print(table("model", ["key", "value"], rows))
