"""How the training loop feeds a text-to-image LlamaGen: raster codes (B, N) with a Caption as the condition.

On the embedded shapes data every training image gets its caption (:mod:`gft_tokens.data.captions`), encoded once
by the frozen text encoder (``--text-encoder``, default ``tokenizers/shapes-t5-tiny``) into features kept beside
the codes, as LlamaGen's precomputed T5 feature files; a batch's condition is the
:class:`~gft_tokens.conditioning.Caption` of its rows. The model records the text encoder it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ...conditioning import Caption
from ...data.captions import caption
from ...data.codes import CodeDataset
from ...errors import GFTError
from ...text_encoder import TextEncoder
from ..llamagen.adapter import LlamaGenAdapter
from .model import t2i_config

DEFAULT_TEXT_ENCODER = "tokenizers/shapes-t5-tiny"


@dataclass
class CaptionedCodes(CodeDataset):
    """Codes of captioned images: ``features`` (N, L, C) and ``mask`` (N, L) of each image's caption."""

    features: torch.Tensor = None
    mask: torch.Tensor = None
    captions: list = None
    text_encoder: dict = None

    def batch(self, index, view):
        return self.codes[index, view], Caption(self.features[index], self.mask[index])

    def subset(self, rows: slice) -> "CaptionedCodes":
        return replace(super().subset(rows), features=self.features[rows], mask=self.mask[rows],
                       captions=self.captions[rows])


def encode_captions(encoder: TextEncoder, texts: list[str], batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    feats, masks = [], []
    for i in range(0, len(texts), batch_size):
        f, m = encoder.encode(texts[i:i + batch_size])
        feats.append(f.cpu())
        masks.append(m.cpu())
    return torch.cat(feats), torch.cat(masks)


class T2IAdapter(LlamaGenAdapter):
    family = "t2i"
    config_fn = staticmethod(t2i_config)
    derived_keys = LlamaGenAdapter.derived_keys + ("caption_dim", "caption_len", "text_encoder")

    def check_source(self, data):
        if data != "shapes":
            raise GFTError("the t2i family trains on the embedded captioned shapes data only (--data shapes); "
                           "shards carry no caption features yet")

    def shapes_data(self, tokenizer, options):
        codes = super().shapes_data(tokenizer, options, flip=False)  # a mirror would contradict "left"/"right"
        encoder = TextEncoder.from_pretrained(getattr(options, "text_encoder", None) or DEFAULT_TEXT_ENCODER)
        texts = [caption(options.seed, i) for i in range(len(codes))]
        feats, mask = encode_captions(encoder, texts)
        return CaptionedCodes(codes.codes, codes.labels, 0, feats, mask, texts, encoder.describe())

    def data_config(self, data):
        return {"caption_dim": data.features.shape[-1], "caption_len": data.features.shape[1],
                "text_encoder": data.text_encoder}

    def check_data(self, data, config):
        super().check_data(data, config)
        if not isinstance(data, CaptionedCodes):
            raise GFTError("a t2i run needs captioned data; this data has no captions")
        width, length = data.features.shape[-1], data.features.shape[1]
        if (width, length) != (config.caption_dim, config.caption_len):
            raise GFTError(f"text encoder {data.text_encoder['path']} gives captions of {length} x {width}, the model "
                           f"takes {config.caption_len} x {config.caption_dim}")
