import pytest
import torch

from gft_tokens import GFTError
from gft_tokens.data import CLASS_NAMES, NUM_CLASSES, ShapesDataset, heldout


def test_at_least_ten_classes():
    assert NUM_CLASSES >= 10 and len(set(CLASS_NAMES)) == NUM_CLASSES


def test_deterministic_from_seed():
    a, la = ShapesDataset(32, seed=3).tensors()
    b, lb = ShapesDataset(32, seed=3).tensors()
    c, _ = ShapesDataset(32, seed=4).tensors()
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)


def test_items_shape_range_and_labels():
    ds = ShapesDataset(200, seed=0)
    x, y = ds.tensors()
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert y.min() >= 0 and y.max() < NUM_CLASSES
    assert len(y.unique()) == NUM_CLASSES  # 200 uniform draws cover all 10 classes
    img, label = ds[5]
    assert torch.equal(img, x[5]) and label == y[5].item()


def test_64px_selectable():
    x, _ = ShapesDataset(4, size=64).tensors()
    assert x.shape == (4, 3, 64, 64)


def test_balanced_heldout_split_differs_from_train():
    h = heldout(20)
    assert [h[i][1] for i in range(20)] == [i % NUM_CLASSES for i in range(20)]
    assert not torch.equal(h.tensors()[0][:4], ShapesDataset(4, balanced=True).tensors()[0])


def test_intra_class_variation():
    ds = ShapesDataset(400, seed=0)
    params = [ds.params(i) for i in range(400) if ds.params(i).label == 0]
    assert len(params) > 10
    for field in ("cx", "cy", "radius", "angle", "grad_dir"):
        values = torch.tensor([getattr(p, field) for p in params])
        assert values.std() > 0.05, field
    fgs = torch.tensor([p.fg for p in params])
    bgs = torch.tensor([p.bg for p in params])
    assert fgs.std(0).max() > 0.05 and bgs.std(0).min() > 0.01  # shades and backgrounds vary


def test_each_class_keeps_its_hue_family():
    import colorsys

    from gft_tokens.data.shapes import CLASS_HUES, HUE_JITTER

    ds = ShapesDataset(300, seed=1)
    for i in range(300):
        p = ds.params(i)
        hue = colorsys.rgb_to_hsv(*p.fg)[0]
        gap = min(abs(hue - CLASS_HUES[p.label]), 1 - abs(hue - CLASS_HUES[p.label]))
        assert gap <= HUE_JITTER + 1e-6


def test_bad_size_and_length():
    with pytest.raises(GFTError, match="size"):
        ShapesDataset(10, size=48)
    with pytest.raises(GFTError, match="positive"):
        ShapesDataset(0)


def test_fingerprint_tracks_rendering():
    from gft_tokens.data.shapes import fingerprint

    assert fingerprint(32) == fingerprint(32) and fingerprint(32) != fingerprint(64)
