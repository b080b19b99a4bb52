"""Build a tiny random-weight Llama and a byte-level BPE tokenizer, fully offline.

Run inside the vLLM venv (it has torch, transformers and tokenizers):

    HF_HUB_OFFLINE=1 .venv-vllm/bin/python scripts/build_tiny_model.py OUT_DIR

The model is what the real-vLLM integration tests serve (see
``tests/serving/README.md``): Llama architecture, hidden 128, 2 heads of
head_dim 64 (vLLM's CPU attention rejects head sizes below 32), intermediate 256, 2
layers, tied embeddings, ~0.85 M parameters. The weights are random with a fixed seed,
so the text is gibberish, but token counts, timing and ``/metrics`` behave like a real
model. The tokenizer is trained on the Python standard library's own ``.py`` files, so
nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from pathlib import Path

VOCAB_SIZE = 4096
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


def _corpus(max_files: int) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())[:max_files]
    if not files:
        raise SystemExit(f"error: no .py files under {stdlib} to train the tokenizer on")
    return [str(p) for p in files]


def build(out: Path, seed: int, max_files: int) -> dict:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train(_corpus(max_files), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    info = {
        "num_params": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(fast),
        "seed": seed,
    }
    (out / "aragog_tiny.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("out", type=Path, help="output directory (created)")
    ap.add_argument(
        "--seed", type=int, default=0, help="torch seed for the random weights (default 0)"
    )
    ap.add_argument(
        "--max-files", type=int, default=400, help="stdlib .py files to train the tokenizer on"
    )
    args = ap.parse_args(argv)
    info = build(args.out, args.seed, args.max_files)
    print(
        f"tiny model in {args.out}: {info['num_params']:,} parameters, vocab {info['vocab_size']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
