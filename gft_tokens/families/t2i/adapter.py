"""How the training loop feeds a text-to-image LlamaGen: raster codes (B, N) with a Caption as the condition.

On the embedded shapes data every training image gets its caption (:mod:`gft_tokens.data.captions`), encoded once
by the frozen text encoder (``--text-encoder``, default ``tokenizers/shapes-t5-tiny``) into features kept beside
the codes, as LlamaGen's precomputed T5 feature files; a batch's condition is the
:class:`~gft_tokens.conditioning.Caption` of its rows. From shards (``--data``), the stream gives each sample's
Caption (:class:`~gft_tokens.data.shards.ShardCaptions`): the features ``extract_codes.py --text-encoder`` stored
beside the codes, refused unless the run's text encoder made them, or else the caption text of image shards
encoded by the run's text encoder on the fly (images unflipped, as on the embedded data: a mirror would contradict
"left" / "right"); shards without captions are refused. The model records the text encoder it was trained with,
every checkpoint too, and ``--resume`` refuses another one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ...conditioning import Caption
from ...data.captions import caption
from ...data.codes import CodeDataset
from ...data.shards import ShardCaptions
from ...errors import GFTError
from ...paths import shipped
from ...text_encoder import TextEncoder, text_encoder_differences
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


def text_encoder_path(options) -> str:
    """The run's ``--text-encoder`` (the default resolves in this repository)."""
    return shipped(getattr(options, "text_encoder", None) or DEFAULT_TEXT_ENCODER)


def _caption_shape(data) -> tuple[int, int]:
    """(L, C) of the captions of extracted data or of a shard stream."""
    if isinstance(data, CaptionedCodes):
        return data.features.shape[1], data.features.shape[-1]
    return data.captions.shape


class T2IAdapter(LlamaGenAdapter):
    family = "t2i"
    config_fn = staticmethod(t2i_config)
    derived_keys = LlamaGenAdapter.derived_keys + ("caption_dim", "caption_len", "text_encoder")

    def shapes_data(self, tokenizer, options):
        codes = super().shapes_data(tokenizer, options, flip=False)  # a mirror would contradict "left"/"right"
        encoder = TextEncoder.from_pretrained(text_encoder_path(options))
        texts = [caption(options.seed, i) for i in range(len(codes))]
        feats, mask = encoder.encode_batched(texts, 500)  # a fresh encoder: on the CPU, beside the codes
        return CaptionedCodes(codes.codes, codes.labels, 0, feats, mask, texts, encoder.describe())

    def stream_options(self, options):
        return {"captions": ShardCaptions(text_encoder_path(options)), "flip": False}

    def data_config(self, data):
        length, width = _caption_shape(data)
        return {"caption_dim": width, "caption_len": length, "text_encoder": data.text_encoder}

    def fine_tune_config(self, data):
        return {"text_encoder": data.text_encoder}  # the encoder prompts must be encoded with

    def check_data(self, data, config):
        super().check_data(data, config)
        if not isinstance(data, CaptionedCodes):
            raise GFTError("a t2i run needs captioned data; this data has no captions")
        self._check_caption_shape(data, config)

    def check_stream(self, stream, config):
        if stream.captions is None:
            raise GFTError(f"a t2i run needs captions; {stream.spec} is read without them")
        self._check_caption_shape(stream, config)

    @staticmethod
    def _check_caption_shape(data, config):
        length, width = _caption_shape(data)
        if (width, length) != (config.caption_dim, config.caption_len):
            raise GFTError(f"text encoder {data.text_encoder['path']} gives captions of {length} x {width}, the model "
                           f"takes {config.caption_len} x {config.caption_dim}")

    def condition_record(self, data):
        return data.text_encoder

    def check_resume(self, saved, data, options, where):
        mine = self.condition_record(data)
        was = saved.get("conditions")
        if isinstance(was, dict):
            diffs = text_encoder_differences(was, mine)
            if diffs:
                raise GFTError(f"cannot resume: {where} was trained with the text encoder {was.get('path')}, but "
                               f"--text-encoder {mine['path']} is another one ({'; '.join(diffs)}): resume with "
                               f"--text-encoder {was.get('path')}, or start a new run (--init-from its export)")
            return
        before = (saved.get("options") or {}).get("text_encoder")  # a checkpoint that kept only the option
        if before is not None and before != getattr(options, "text_encoder", None):
            raise GFTError(f"cannot resume: {where} was trained with --text-encoder {before}, this run has "
                           f"--text-encoder {getattr(options, 'text_encoder', None)}")
