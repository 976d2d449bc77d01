"""Greedy DoLa tokens from transformers 4.46.3's own ``generate(dola_layers=...)``: run as a
script in a subprocess whose PYTHONPATH puts a transformers 4.46.3 install first (the venv's
transformers 5.x no longer has DoLa decoding in ``generate``).

    PYTHONPATH=DIR python tests/tf446_dola.py MODEL_DIR LAYERS MAX_NEW PROMPT [PROMPT ...]

LAYERS: low, high or a JSON list. Prints {"version": ..., "tokens": [[...], ...]} as JSON.
repetition_penalty is left at 1.0 (vLLM applies its own penalty after the contrast).
"""

import json
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(model_dir: str, layers: str, max_new: int, prompts: list[str]) -> dict:
    dola_layers = layers if layers in ("low", "high") else json.loads(layers)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model.generation_config.eos_token_id = None  # run max_new tokens, as vLLM's ignore_eos does
    tokens = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, dola_layers=dola_layers,
                             max_new_tokens=max_new, repetition_penalty=1.0,
                             pad_token_id=tokenizer.eos_token_id or 0)
        tokens.append(out[0, ids.shape[1]:].tolist())
    return {"version": transformers.__version__, "tokens": tokens}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:])))
