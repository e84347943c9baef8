import json

import pytest
import torch

from gft_tokens import GFTError
from gft_tokens.data import CLASS_NAMES, NUM_CLASSES, ShapesDataset, heldout
from gft_tokens.data.shapes import COLOUR_NAMES


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
    for field in ("cx", "cy", "size", "angle", "grad_dir"):
        values = torch.tensor([getattr(p, field) for p in params])
        assert values.std() > 0.05, field
    fgs = torch.tensor([p.fg for p in params])
    bgs = torch.tensor([p.bg for p in params])
    assert fgs.std(0).min() > 0.2 and bgs.std(0).min() > 0.01  # colours from the whole wheel; backgrounds vary
    assert len({p.colour for p in params}) == 8


def test_only_the_label_depends_on_the_class():
    """Overriding the class changes the label and nothing else: every other attribute is drawn independently."""
    from dataclasses import asdict, replace

    from gft_tokens.data.shapes import sample_params

    for i in range(20):
        a, b = sample_params(5, i, label=0), sample_params(5, i, label=7)
        assert a.label == 0 and b.label == 7 and asdict(replace(a, label=7)) == asdict(b)


def _colour_features(images):
    """Per image: mean and std of R, G and B (6 numbers)."""
    return torch.cat([images.mean((2, 3)), images.std((2, 3))], 1).double()


def _held_out_accuracy(features, labels, num_classes, n_train):
    """Multinomial logistic regression (L-BFGS) and least squares on standardised features; held-out accuracies."""
    mu, sd = features[:n_train].mean(0), features[:n_train].std(0)
    x = (features - mu) / sd
    x_tr, x_te, y_tr, y_te = x[:n_train], x[n_train:], labels[:n_train], labels[n_train:]
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], num_classes).double()
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x_tr), y_tr)
        loss.backward()
        return loss

    opt.step(closure)
    logistic = lin(x_te).argmax(1).eq(y_te).double().mean().item()
    ones = torch.ones(len(x), 1, dtype=x.dtype)
    a = torch.cat([x, ones], 1)
    w = torch.linalg.lstsq(a[:n_train], torch.nn.functional.one_hot(y_tr, num_classes).double()).solution
    least_squares = (a[n_train:] @ w).argmax(1).eq(y_te).double().mean().item()
    return logistic, least_squares


@pytest.fixture(scope="module")
def five_thousand():
    ds = ShapesDataset(5000, seed=11)
    images, labels = ds.tensors()
    colours = torch.tensor([COLOUR_NAMES.index(ds.params(i).colour) for i in range(len(ds))])
    return images, labels, colours


def test_colour_alone_does_not_give_the_class(five_thousand):
    images, labels, colours = five_thousand
    features = _colour_features(images)
    logistic, least_squares = _held_out_accuracy(features, labels, NUM_CLASSES, n_train=4000)
    assert logistic <= 0.15 and least_squares <= 0.15, (logistic, least_squares)  # chance: 0.10
    # the same classifier on the same features does read what colour carries: the test can fail
    logistic, least_squares = _held_out_accuracy(features, colours, len(COLOUR_NAMES), n_train=4000)
    assert logistic >= 0.6, logistic


def test_metadata_names_and_buckets():
    from gft_tokens.data.shapes import (COLOUR_HUE_RANGES, POSITION_NAMES, SIZE_NAMES, SIZE_RANGE, colour_name,
                                        describe, sample_params, travel)

    ranges = sorted((lo % 360, hi % 360 if hi % 360 else 360) for lo, hi in COLOUR_HUE_RANGES.values())
    assert all(b[0] - a[1] >= 10 for a, b in zip(ranges, ranges[1:]))  # gaps between the names' hue ranges
    ds = ShapesDataset(3000, seed=2)
    metas = [ds.metadata(i) for i in range(len(ds))]
    seen = {key: {m[key] for m in metas} for key in ("shape", "colour", "size", "position")}
    assert seen["shape"] == set(CLASS_NAMES) and seen["colour"] == set(COLOUR_NAMES)
    assert seen["size"] == set(SIZE_NAMES) and seen["position"] == {n for row in POSITION_NAMES for n in row}
    for m in metas[:300]:
        raw = m["raw"]
        assert m["shape"] == CLASS_NAMES[m["label"]] and colour_name(raw["hue"]) == m["colour"]
        lo, hi = SIZE_RANGE
        assert SIZE_NAMES[min(2, int((raw["size"] - lo) / (hi - lo) * 3))] == m["size"]
        t = travel(raw["size"])
        column = "left" if raw["cx"] < -t / 3 else "right" if raw["cx"] > t / 3 else ""
        row = "top" if raw["cy"] < -t / 3 else "bottom" if raw["cy"] > t / 3 else ""
        assert m["position"] == (f"{row} {column}".strip() or "center")
    # deterministic, JSON-ready, and the same through describe(params)
    again = ShapesDataset(3000, seed=2)
    assert [again.metadata(i) for i in range(50)] == metas[:50] == [describe(sample_params(2, i)) for i in range(50)]
    assert json.loads(json.dumps(metas[:50])) == metas[:50]


def test_metadata_matches_the_image():
    """The colour name, the size and the position of the metadata are what the rendered pixels show."""
    import colorsys

    from gft_tokens.data.shapes import colour_name

    ds = ShapesDataset(200, seed=4)
    symmetric = {"circle", "square", "diamond", "hexagon", "star", "plus", "ring", "triangle"}
    for i in range(len(ds)):
        image, _ = ds[i]
        meta = ds.metadata(i)
        rgb = (image + 1) / 2  # (3, H, W) in [0, 1]
        # foreground: brighter than halfway between the shape's value (≥ 0.7) and the dark background's (≤ 0.42)
        fg = rgb.max(0).values >= (meta["raw"]["value"] + max(meta["raw"]["background_rgb"])) / 2
        assert fg.sum() > 10, i
        hues = torch.tensor([colorsys.rgb_to_hsv(*rgb[:, y, x].tolist())[0] for y, x in fg.nonzero().tolist()])
        angle = torch.atan2(torch.sin(2 * torch.pi * hues).mean(), torch.cos(2 * torch.pi * hues).mean())
        hue = float(torch.rad2deg(angle)) % 360
        gap = abs(hue - meta["raw"]["hue"]) % 360
        assert min(gap, 360 - gap) < 3.0, (i, hue, meta)  # the ranges are ≥ 12° apart: the name is unambiguous
        assert colour_name(meta["raw"]["hue"]) == meta["colour"]
        # the foreground covers about the area of a disc of radius `size` (canvas of side 2 = 32 px)
        area = fg.sum().item() * (2 / 32) ** 2
        assert 0.75 < area / (torch.pi * meta["raw"]["size"] ** 2) < 1.25, (i, area, meta)
        if meta["shape"] in symmetric:  # centroid = centre for shapes symmetric about their centre
            ys, xs = fg.nonzero().double().T
            assert abs((xs.mean() + 0.5) / 16 - 1 - meta["raw"]["cx"]) < 0.06, (i, meta)
            assert abs((ys.mean() + 0.5) / 16 - 1 - meta["raw"]["cy"]) < 0.06, (i, meta)


def test_bad_size_and_length():
    with pytest.raises(GFTError, match="size"):
        ShapesDataset(10, size=48)
    with pytest.raises(GFTError, match="positive"):
        ShapesDataset(0)


def test_fingerprint_tracks_rendering_and_data_version(monkeypatch):
    from gft_tokens.data import shapes
    from gft_tokens.data.shapes import fingerprint

    current = fingerprint(32)
    assert current == fingerprint(32) and current != fingerprint(64)
    monkeypatch.setattr(shapes, "DATA_VERSION", shapes.DATA_VERSION - 1)
    assert fingerprint(32) != current  # caches keyed on it (codes, evaluation references) are never reused
