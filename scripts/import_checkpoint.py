#!/usr/bin/env python
"""Convert an official checkpoint into this toolkit's format (config.json + model.safetensors).

    python scripts/import_checkpoint.py --format llamagen-gpt --grid-size 24 c2i_3B_384.pt models/llamagen-3b
    python scripts/import_checkpoint.py --format llamagen-vq --image-size 384 vq_ds16_c2i.pt tokenizers/llamagen-vq16
    python scripts/import_checkpoint.py --format llamagen-t2i --grid-size 16 --text-encoder t5-ckpt/flan-t5-xl \
        t2i_XL_stage1_256.pt models/llamagen-t2i-xl            # text-to-image; FLAN-T5-XL from a local directory
    python scripts/import_checkpoint.py --format llamagen-gpt --grid-size 24 --tokenizer tokenizers/llamagen-vq16 \\
        LlamaGen3B_GF.pt models/llamagen-3b-gft                      # a GFT checkpoint: its β embedder is kept
    python scripts/import_checkpoint.py --format var-vqvae vae_ch160v4096z32.pth tokenizers/var-vqvae
    python scripts/import_checkpoint.py --format var --vqvae vae_ch160v4096z32.pth --tokenizer tokenizers/var-vqvae \
        var_d16.pth models/var-d16
    python scripts/import_checkpoint.py --format mar-kl16 kl16.ckpt tokenizers/mar-kl16
    python scripts/import_checkpoint.py --format mar --tokenizer tokenizers/mar-kl16 checkpoint-last.pth models/mar-b

The format is always given (--format); it is never guessed from the file name. Files are read with
torch.load(weights_only=True) or safetensors; a pickle that needs code execution is refused. A LlamaGen GPT
without a β embedder gets one added with a zero-initialised output layer, so GFT fine-tuning
(`scripts/train_llamagen.py --init-from OUT`) starts exactly at the published model.
"""

from __future__ import annotations

import argparse

import gft_tokens.families  # noqa: F401  (model families register their importers on import)
import gft_tokens.tokenizers  # noqa: F401
from gft_tokens.validate import ArgumentParser, bounded, positive
from gft_tokens.errors import cli_main
from gft_tokens.importers import IMPORTERS, import_checkpoint

# CLI flag → importer option; a flag is passed on only when given, and a format refuses options it does not take
OPTION_FLAGS = {"grid_size": int, "image_size": int, "preset": str, "n_head": int, "tokenizer": str, "vqvae": str,
                "scales": str, "cls_token_num": int, "class_dropout_prob": float, "num_sampling_steps": int,
                "text_encoder": str}


@cli_main
def main(argv=None):
    formats = "\n".join(f"  {name:14s} {imp.description}" for name, imp in sorted(IMPORTERS.items()))
    parser = ArgumentParser(description=__doc__, epilog="formats:\n" + formats,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=sorted(IMPORTERS), help="checkpoint format (required)")
    parser.add_argument("src", help="the official checkpoint file (.pt / .pth / .safetensors)")
    parser.add_argument("out", help="output directory (written atomically)")
    parser.add_argument("--key", help="container key holding the state dict (default: 'model', 'module', "
                                      "'state_dict' or the whole file)")
    parser.add_argument("--grid-size", type=positive(int), help="llamagen-gpt, llamagen-t2i: token grid side (16 for 256px, 24 for "
                                                              "384px, 32 for 512px)")
    parser.add_argument("--image-size", type=positive(int), help="llamagen-vq, var-vqvae, mar-kl16: image side the tokenizer "
                                                       "is used at (var-vqvae: picks VAR's scale schedule)")
    parser.add_argument("--scales", help="var-vqvae: scale schedule, comma-separated (default: VAR's for the image "
                                         "size)")
    parser.add_argument("--num-sampling-steps", type=positive(int), help="mar: diffusion steps per token (default: the "
                                                               "training args' or 100)")
    parser.add_argument("--cls-token-num", type=positive(int), help="llamagen-gpt: class-token positions (read from the "
                                                          "checkpoint's training args when it has them; default 1); "
                                                          "> 1 imports LlamaGen's official c2i layout (one class "
                                                          "vector, RoPE shifted)")
    parser.add_argument("--class-dropout-prob", type=bounded(float, min=0, lt=1),
                        help="llamagen-gpt: the training class dropout; 0 means the class table has no null row "
                             "(read from the training args when present; default: LlamaGen's 0.1)")
    parser.add_argument("--preset", help="llamagen-gpt, llamagen-t2i, mar: model preset (default: from the "
                                         "training args or the shapes)")
    parser.add_argument("--n-head", type=positive(int), help="llamagen-gpt, llamagen-t2i, mar: attention heads of a size that "
                                                             "fits no preset")
    parser.add_argument("--beta-embed", action=argparse.BooleanOptionalAction, default=None,
                        help="llamagen-gpt, llamagen-t2i, var: add a zero-initialised β embedder when the checkpoint has none "
                             "(default: yes; --no-beta-embed imports a plain CFG model; also mar)")
    parser.add_argument("--tokenizer", help="llamagen-gpt, llamagen-t2i, var: tokenizer directory to record in the "
                                            "model")
    parser.add_argument("--text-encoder", help="llamagen-t2i: local text-encoder directory (FLAN-T5-XL) to record in "
                                               "the model; its width must be the checkpoint's caption width")
    parser.add_argument("--vqvae", help="var: the released VQVAE file whose codebook and φ convs build the inputs")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT even if it holds other files")
    args = parser.parse_args(argv)
    options = {k: getattr(args, k) for k in [*OPTION_FLAGS, "beta_embed"] if getattr(args, k) is not None}
    converted = import_checkpoint(args.format, args.src, args.out, key=args.key, overwrite=args.overwrite,
                                  **options)
    n = sum(v.numel() for v in converted.state.values())
    print(f"wrote {args.out}: {converted.model_class.__name__}, {n / 1e6:.2f}M values")
    for note in converted.notes:
        print(f"  - {note}")


if __name__ == "__main__":
    main()
