"""Captions of the embedded shapes data: written from the sample's own attributes, deterministic, several templates."""

from collections import Counter

from gft_tokens.data.captions import TEMPLATES, caption, caption_of, dataset_captions, vocabulary, words
from gft_tokens.data.shapes import CLASS_NAMES, COLOUR_NAMES, ShapesDataset


def test_caption_templates_read_the_attributes():
    a = {"shape": "star", "colour": "red", "size": "small", "position": "top left"}
    assert caption_of(a, 0) == "a small red star in the top left corner"
    assert caption_of(a, 1) == "a red star"
    assert caption_of({**a, "size": "large", "position": "bottom"}, 2) == "a star, large, at the bottom"
    assert caption_of({**a, "position": "center"}, 3) == "a red star in the center"


def test_captions_are_deterministic_and_name_the_samples_own_shape_and_words():
    ds = ShapesDataset(length=60, seed=3)
    caps = dataset_captions(ds)
    assert caps == dataset_captions(ShapesDataset(length=60, seed=3)) == [caption(3, i) for i in range(60)]
    assert caps != dataset_captions(ShapesDataset(length=60, seed=4))
    used = Counter()
    vocab = set(vocabulary())
    for i, text in enumerate(caps):
        meta = ds.metadata(i)
        ws = words(text)
        assert meta["shape"] in ws and set(ws) <= vocab
        assert [c for c in COLOUR_NAMES if c in ws] in ([], [meta["colour"]])
        assert [s for s in CLASS_NAMES if s in ws] == [meta["shape"]]
        used[next(t for t in range(len(TEMPLATES)) if caption_of(meta, t) == text)] += 1
    assert len(used) >= 4  # several templates in use


def test_vocabulary_is_small_and_covers_every_attribute():
    vocab = vocabulary()
    assert set(CLASS_NAMES) | set(COLOUR_NAMES) | {"small", "large", "top", "left", "corner", ","} <= set(vocab)
    assert len(vocab) < 60
