"""GenEval-style attribute accuracy: prompt parsing (every caption template round-trips), the shipped attribute
probe on rendered images, scoring that counts only requested attributes, a shortcut-absent check (an image with
another attribute than its prompt asks scores at chance for that attribute and only that one), evaluate.py
--attributes and the text-to-image sweep."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import ROOT, SHIPPED_VQ, script_main
from gft_tokens.data.captions import TEMPLATES, caption_of, dataset_captions
from gft_tokens.data.shapes import (CLASS_NAMES, COLOUR_NAMES, POSITION_NAMES, SIZE_NAMES, ShapesDataset, describe,
                                    render, travel)
from gft_tokens.errors import GFTError
from gft_tokens.eval.attributes import (heldout_prompts, parse_prompt, prompts_of_samples, requested_ids,
                                        score_attributes, score_predictions)
from gft_tokens.viz import to_uint8

SHIPPED_ATTR = ROOT / "tokenizers" / "shapes-attr-probe"
SHIPPED_PROBE = ROOT / "tokenizers" / "shapes-probe"
TEST_SEED = 6_000_011  # a split no probe trains, validates or reports on
ATTRS = ("shape", "colour", "size", "position")


@pytest.fixture(scope="module")
def attr_probe():
    from gft_tokens.eval.attr_probe import load_attribute_probe

    return load_attribute_probe(SHIPPED_ATTR)


def _all_attribute_sets():
    for shape in CLASS_NAMES:
        for colour in COLOUR_NAMES:
            for size in SIZE_NAMES:
                for row in POSITION_NAMES:
                    for position in row:
                        yield {"shape": shape, "colour": colour, "size": size, "position": position}


def _template_keys(t: int) -> set[str]:
    """The attributes template ``t`` writes: those whose change changes the caption."""
    base = {"shape": "star", "colour": "red", "size": "small", "position": "top left"}
    other = {"shape": "ring", "colour": "blue", "size": "large", "position": "bottom"}
    return {k for k in base if caption_of(base, t) != caption_of({**base, k: other[k]}, t)}


def test_every_caption_of_every_template_parses_back_to_the_attributes_it_names():
    keys = [_template_keys(t) for t in range(len(TEMPLATES))]
    assert keys[0] == set(ATTRS) and keys[1] == {"shape", "colour"} and all("shape" in k for k in keys)
    n = 0
    for attributes in _all_attribute_sets():
        for t in range(len(TEMPLATES)):
            assert parse_prompt(caption_of(attributes, t)) == {k: attributes[k] for k in ATTRS if k in keys[t]}
            n += 1
    assert n == 10 * 8 * 3 * 9 * len(TEMPLATES)
    # and the held-out prompt set of the sweep is the held-out split's own captions
    ds = ShapesDataset(length=30, seed=1_000_003, balanced=True)
    assert heldout_prompts(30) == dataset_captions(ds)
    ids = requested_ids(heldout_prompts(30))
    assert (ids["shape"] == np.arange(30) % 10).all() and ((ids["colour"] >= 0) | (ids["colour"] == -1)).all()


@pytest.mark.parametrize("prompt, message", [
    ("a crimson star", "outside the caption vocabulary (crimson)"),
    ("a red blue star", "more than one colour (red, blue)"),
    ("a star at the top in the top left corner", "more than one position"),
    ("a star in the center at the top", "the center and another position"),
    ("a small large ring", "more than one size"),
])
def test_unreadable_prompts_are_refused(prompt, message):
    with pytest.raises(GFTError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_prompt(prompt)


def test_scores_count_only_the_attributes_a_prompt_names():
    requested = requested_ids(["a red star", "a small ring", "a star, large, at the top", "a blue plus"])
    predicted = {"shape": np.array([5, 7, 0, 6]), "colour": np.array([0, 3, 3, 0]),
                 "size": np.array([2, 0, 2, 1]), "position": np.array([4, 4, 1, 4])}
    # star = 5, ring = 7, plus = 6; red = 0, blue = 5; small = 0, large = 2; top = 1
    s = score_predictions(predicted, requested, n_boot=0)
    a = s["attributes"]
    assert (a["shape"]["requested"], a["shape"]["accuracy"]) == (4, 0.75)  # the third image is a circle
    assert (a["colour"]["requested"], a["colour"]["accuracy"]) == (2, 0.5)  # the plus is red, not blue
    assert (a["size"]["requested"], a["size"]["accuracy"]) == (2, 1.0)
    assert (a["position"]["requested"], a["position"]["accuracy"]) == (1, 1.0)
    assert a["colour"]["by_value"] == {"red": 1.0, "blue": 0.0} and a["size"]["chance"] == pytest.approx(1 / 3)
    assert s["all_correct"] == 0.5 and s["all_correct_n"] == 4  # images 1 and 2 show all they asked for
    assert s["all_correct_std"] is None and a["shape"]["accuracy_std"] is None  # no resamples asked
    spread = score_predictions(predicted, requested, n_boot=50, seed=1)
    assert 0.05 < spread["all_correct_std"] < 0.5 and spread["all_correct"] == 0.5
    with pytest.raises(GFTError, match="at least 2 resamples"):
        score_predictions(predicted, requested, n_boot=1)


def _render_all(params):
    return to_uint8(torch.stack([render(p) for p in params]))


def test_the_shipped_probe_reads_every_attribute_off_rendered_images(attr_probe):
    from gft_tokens.eval.attr_probe import attribute_report

    ds = ShapesDataset(length=300, seed=TEST_SEED, balanced=True)
    params = [ds.params(i) for i in range(len(ds))]
    report = attribute_report(attr_probe, _render_all(params), params)
    for a in ATTRS:
        assert report[f"{a}_accuracy"] >= 0.9, (a, report)
    # and through the scorer, from captions naming all four attributes
    prompts = [caption_of(describe(p), 0) for p in params]
    scores = score_attributes(_render_all(params), prompts, attr_probe, n_boot=0)
    assert all(scores["attributes"][a]["accuracy"] == report[f"{a}_accuracy"] for a in ATTRS)
    assert scores["all_correct"] == pytest.approx(report["all_accuracy"])


def _swap(p, q, attribute):
    """``p`` with ``attribute`` taken from ``q`` and nothing else changed (the position bucket kept when the size
    changes, since the bucket is relative to the size's travel)."""
    if attribute == "shape":
        return dataclasses.replace(p, label=q.label)
    if attribute == "colour":
        return dataclasses.replace(p, colour=q.colour, hue=q.hue, saturation=q.saturation, value=q.value)
    if attribute == "size":
        k = travel(q.size) / travel(p.size)
        return dataclasses.replace(p, size=q.size, cx=p.cx * k, cy=p.cy * k)
    k = travel(p.size) / travel(q.size)
    return dataclasses.replace(p, cx=q.cx * k, cy=q.cy * k)


def test_no_shortcut_an_attribute_the_image_does_not_show_scores_at_chance(attr_probe):
    """Prompts from one set of samples, images with one attribute drawn from other samples (independently of the
    prompt): that attribute falls to chance, the others stay where they were."""
    ds = ShapesDataset(length=200, seed=TEST_SEED + 1, balanced=True)
    params = [ds.params(i) for i in range(len(ds))]
    donors = [ShapesDataset(length=200, seed=TEST_SEED + 2).params(i) for i in range(200)]
    prompts = [caption_of(describe(p), 0) for p in params]
    matched = score_attributes(_render_all(params), prompts, attr_probe, n_boot=0)["attributes"]
    for a in ATTRS:
        assert matched[a]["accuracy"] >= 0.85, (a, matched[a])
    for attribute in ATTRS:
        swapped = [_swap(p, q, attribute) for p, q in zip(params, donors)]
        assert [describe(s)[b] for s in swapped for b in ATTRS if b != attribute] == \
            [describe(p)[b] for p in params for b in ATTRS if b != attribute]  # only that attribute moved
        scores = score_attributes(_render_all(swapped), prompts, attr_probe, n_boot=0)["attributes"]
        chance = scores[attribute]["chance"]
        assert scores[attribute]["accuracy"] < chance + 0.12, (attribute, scores[attribute])
        for other in ATTRS:
            if other != attribute:
                assert scores[other]["accuracy"] >= matched[other]["accuracy"] - 0.06, (attribute, other)


def _t2i_npz(path, n=40, with_prompts=True, rows=True):
    ds = ShapesDataset(length=n, seed=TEST_SEED + 3, balanced=True)
    images = _render_all([ds.params(i) for i in range(n)])
    prompts = dataset_captions(ds)
    arrays = {"images": images}
    if with_prompts and rows:  # generate.py's layout: distinct prompts and each image's row
        distinct = list(dict.fromkeys(prompts))
        arrays.update(prompts=np.array(distinct), rows=np.array([distinct.index(p) for p in prompts]))
    elif with_prompts:
        arrays["prompts"] = np.array(prompts)
    np.savez(path, **arrays)
    return path, prompts


def test_prompts_of_samples_reads_both_layouts_and_refuses_a_mismatch(tmp_path):
    from gft_tokens.eval.npz import read_npz

    for rows in (True, False):
        path, prompts = _t2i_npz(tmp_path / f"s{rows}.npz", n=12, rows=rows)
        assert prompts_of_samples(read_npz(path), path) == prompts
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 32, 32, 3), np.uint8), prompts=np.array(["a star"] * 2))
    with pytest.raises(GFTError, match="2 prompts for 3 images"):
        prompts_of_samples(read_npz(tmp_path / "bad.npz"), "bad.npz")
    np.savez(tmp_path / "bad2.npz", images=np.zeros((2, 32, 32, 3), np.uint8), prompts=np.array(["a star"]),
             rows=np.array([0, 3]))
    with pytest.raises(GFTError, match="must index its 1 prompts"):
        prompts_of_samples(read_npz(tmp_path / "bad2.npz"), "bad2.npz")


def test_evaluate_attributes_scores_a_prompted_npz(tmp_path, capsys):
    path, _ = _t2i_npz(tmp_path / "t2i.npz")
    result = script_main("evaluate.py")(["--samples", str(path), "--attributes", "--ref-size", "60",
                                         "--bootstrap", "5", "--json"])
    scores = result["attributes"]
    assert scores["n"] == 40 and scores["all_correct_n"] == 40 and scores["n_boot"] == 5
    assert scores["attributes"]["shape"]["requested"] == 40 and scores["attributes"]["shape"]["accuracy"] >= 0.9
    assert result["class_accuracy"] >= 0.9  # the class probe against the shapes the prompts name
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["attributes"]["probe"] == scores["probe"]


@pytest.mark.parametrize("case, message", [
    ("no-prompts", "holds no prompts ('prompts'): --attributes scores text-to-image samples"),
    ("bad-word", "outside the caption vocabulary (crimson)"),
])
def test_evaluate_attributes_refuses_bad_input_in_one_line(tmp_path, capsys, case, message):
    if case == "no-prompts":
        path = tmp_path / "c2i.npz"
        np.savez(path, arr_0=np.zeros((8, 32, 32, 3), np.uint8), arr_1=np.arange(8))
    else:
        path = tmp_path / "odd.npz"
        np.savez(path, images=np.zeros((2, 32, 32, 3), np.uint8), prompts=np.array(["a crimson star", "a ring"]))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        script_main("evaluate.py")(["--samples", str(path), "--attributes", "--ref-size", "60"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_t2i_sweep_scores_attribute_accuracy_on_held_out_prompts(tmp_path, attr_probe):
    from gft_tokens.eval import load_extractor
    from gft_tokens.eval.sweep import parse_run, run_sweep
    from gft_tokens.families import build_model
    from gft_tokens.tokenizers import load_tokenizer

    tok = load_tokenizer(SHIPPED_VQ)
    record = {**tok.describe(), "path": str(SHIPPED_VQ)}
    encoder = {"path": str(ROOT / "tokenizers" / "shapes-t5-tiny"), "type": "t5", "hidden_size": 64,
               "max_length": 16}
    torch.manual_seed(0)
    for name, beta_embed in (("gft", True), ("cfg", False)):
        m = build_model("t2i", "GPT-nano", vocab_size=1024, grid_size=8, caption_dim=64, caption_len=16,
                        text_encoder=encoder, tokenizer=record, beta_embed=beta_embed)
        torch.nn.init.normal_(m.output.weight, std=0.1)
        m.save_pretrained(tmp_path / name / "model")
    runs = [parse_run(str(tmp_path / "gft" / "model"), "gft"), parse_run(str(tmp_path / "cfg" / "model"), "cfg")]
    out, samples = tmp_path / "sweep", tmp_path / "samples"
    result = run_sweep(runs, load_extractor(str(SHIPPED_PROBE)), out, ref_size=40, family="t2i", betas=[0.5],
                       cfg_scales=[2.0], n_per_class=1, n_prompts=12, batch_size=12, grid_per_class=1, bootstrap=3,
                       attr_probe=attr_probe, samples_dir=samples, log=lambda *_: None)
    rows = {(r["run"], r["setting"]): r for r in result["rows"]}
    assert set(rows) == {("data", None), ("vq-recon", None), ("gft", "β=0.5"), ("cfg", "w=2")}
    assert result["options"]["prompts"] == heldout_prompts(12) and result["conditioning"] == "prompts"
    assert rows[("gft", "β=0.5")]["nfe_per_image"] == 64 and rows[("cfg", "w=2")]["nfe_per_image"] == 128
    assert rows[("data", None)]["attr_shape"] >= 0.9 and rows[("data", None)]["class_accuracy"] >= 0.9
    for key in ("gft", "β=0.5"), ("cfg", "w=2"):
        r = rows[key]
        assert r["attributes"]["n"] == 12 and 0.0 <= r["attr_all"] <= 1.0 and r["attr_all_std"] is not None
        assert r["attr_shape"] == r["attributes"]["attributes"]["shape"]["accuracy"]
    assert "attr_verdict" in result["comparison"][0]
    md = (out / "results.md").read_text()
    assert "## Attribute accuracy (GenEval-style)" in md and "12 prompts" in md and "1 samples per prompt" in md
    assert (out / "best_gft.png").is_file() and (out / "best_cfg.png").is_file()
    assert (out / "fid_vs_attributes.png").stat().st_size > 0  # FID vs all-attributes rate, t2i sweeps only
    # the kept samples carry their prompts: evaluate.py --attributes scores them the same way
    again = script_main("evaluate.py")(["--samples", str(samples / "gft" / "gft_0.5.npz"), "--attributes",
                                        "--bootstrap", "3", "--ref-size", "40", "--json"])
    assert again["attributes"]["all_correct"] == rows[("gft", "β=0.5")]["attr_all"]
    with pytest.raises(GFTError, match="for text-to-image models; these are class-conditional"):
        _c2i_with_prompts(tmp_path)
    assert not (tmp_path / "x").exists()


def _c2i_with_prompts(tmp_path):
    from gft_tokens.eval import load_extractor
    from gft_tokens.eval.sweep import parse_run, run_sweep
    from gft_tokens.families import build_model
    from gft_tokens.tokenizers import load_tokenizer

    tok = load_tokenizer(SHIPPED_VQ)
    build_model("llamagen", "GPT-nano", vocab_size=1024, grid_size=8, num_classes=10,
                tokenizer={**tok.describe(), "path": str(SHIPPED_VQ)}).save_pretrained(tmp_path / "c2i")
    run_sweep([parse_run(str(tmp_path / "c2i"), "cfg")], load_extractor(str(SHIPPED_PROBE)), tmp_path / "x",
              n_prompts=5, ref_size=40)


def test_attribute_probe_training_is_deterministic_and_refuses_a_foreign_folder(tmp_path):
    from gft_tokens.eval.attr_probe import AttrProbeTrainOptions, load_attribute_probe, train_attribute_probe

    small = dict(steps=3, train_images=40, eval_images=10, batch_size=8, tokenizer="", threads=1)
    a = train_attribute_probe(AttrProbeTrainOptions(out=str(tmp_path / "a"), **small), log=lambda *_: None)
    b = train_attribute_probe(AttrProbeTrainOptions(out=str(tmp_path / "b"), **small), log=lambda *_: None)
    assert a["fingerprint"] == b["fingerprint"] == load_attribute_probe(tmp_path / "a").fingerprint
    assert set(a["validation"]["bucket_source"]) == {"size", "position"}
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(GFTError):
        train_attribute_probe(AttrProbeTrainOptions(out=str(tmp_path / "c"), **small), log=lambda *_: None)
    with pytest.raises(GFTError, match="does not exist"):
        load_attribute_probe(tmp_path / "missing")
