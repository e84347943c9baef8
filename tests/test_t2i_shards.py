"""Text-to-image from shards: captions written by make_shards, caption features stored by extract_codes
--text-encoder, t2i training on code shards (stored features) and image shards (captions encoded on the fly), and the
refusals: shards without captions, features of another text encoder, captions of another width than the model's,
--resume with another text encoder."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from conftest import ROOT, SHIPPED_VQ, script_main, solid_image_folder
from gft_tokens.conditioning import Caption
from gft_tokens.data.captions import caption
from gft_tokens.data.shards import ShardStream, write_shards
from gft_tokens.text_encoder import TextEncoder, build_shapes_t5

T5 = ROOT / "tokenizers" / "shapes-t5-tiny"
COUNT = 24
# GPT-nano, two steps, ZeRO-0, one process, shards read in the main process
BASE = ["--preset", "GPT-nano", "--steps", "2", "--batch-size", "4", "--save-every", "0", "--zero-stage", "0",
        "--data-workers", "0", "--warmup-steps", "1", "--tokenizer", str(SHIPPED_VQ), "--text-encoder", str(T5)]


def members(*paths):
    out = {}
    for path in paths:
        with tarfile.open(path) as tf:
            out.update({m.name: tf.extractfile(m).read() for m in tf.getmembers()})
    return out


def keys_of(m):
    return sorted(k[:-4] for k in m if k.endswith(".cls"))


def npy(data):
    return np.load(io.BytesIO(data), allow_pickle=False)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """24 captioned shapes images in two shards, and their codes with the caption features of shapes-t5-tiny."""
    root = tmp_path_factory.mktemp("t2i-shards")
    script_main("make_shards.py")(["--source", "shapes", "--count", str(COUNT), "--shard-size", "12",
                                   "--out", str(root / "images")])
    script_main("extract_codes.py")(["--data", str(root / "images" / "*.tar"), "--tokenizer", str(SHIPPED_VQ),
                                     "--text-encoder", str(T5), "--shard-size", "12", "--out", str(root / "codes")])
    return root


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder.from_pretrained(T5)


class Recorder:
    """Keeps what ShardStream.next_batch returns (the training batches; validation reads the shards itself)."""

    def __init__(self, monkeypatch):
        self.batches = []
        real = ShardStream.next_batch

        def recording(stream):
            out = real(stream)
            self.batches.append(out)
            return out

        monkeypatch.setattr(ShardStream, "next_batch", recording)


@pytest.fixture(scope="module")
def code_run(shards, tmp_path_factory):
    """A t2i run on the code shards with stored caption features, validated on a held-out quarter."""
    out = tmp_path_factory.mktemp("t2i-code-run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        rec = Recorder(mp)
        script_main("train_t2i.py")([*BASE, "--data", str(shards / "codes" / "{000000..000001}.tar"),
                                     "--val-fraction", "0.25", "--val-every", "1", "--out", str(out)])
    return out, rec.batches


def refused(capsys, main, argv, *messages):
    """``main(argv)`` ends with exit 2 and one ``error:`` line holding every message."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for message in messages:
        assert message in err[0], err[0]
    return err[0]


def test_make_shards_writes_each_samples_caption(shards):
    meta = json.loads((shards / "images" / "dataset.json").read_text())
    assert meta["count"] == meta["captions"] == COUNT
    m = members(shards / "images" / "000000.tar", shards / "images" / "000001.tar")
    keys = keys_of(m)
    assert len(keys) == COUNT
    for key in keys:  # the caption the in-memory t2i data gives the same sample
        assert m[f"{key}.txt"].decode("utf-8") == caption(0, int(key))


def test_extract_codes_stores_the_text_encoders_features_of_each_caption(shards, encoder):
    meta = json.loads((shards / "codes" / "dataset.json").read_text())
    assert meta["text_encoder"] == encoder.describe() and len(meta["text_encoder"]["fingerprint"]) == 16
    assert meta["captions"] == meta["count"] == COUNT
    assert meta["flip"] is False and meta["views"] == 1  # no mirrored views of captioned images by default
    m = members(shards / "codes" / "000000.tar", shards / "codes" / "000001.tar")
    keys = keys_of(m)
    texts = [m[f"{k}.txt"].decode("utf-8") for k in keys]
    assert texts == [caption(0, int(k)) for k in keys]
    feats, mask = encoder.encode(texts)
    stored = np.stack([npy(m[f"{k}.capfeat.npy"]) for k in keys])
    stored_mask = np.stack([npy(m[f"{k}.capmask.npy"]) for k in keys])
    assert stored.dtype == np.float32 and stored.shape == (COUNT, 16, 64) and stored_mask.dtype == bool
    torch.testing.assert_close(torch.from_numpy(stored), feats, rtol=1e-5, atol=1e-6)
    assert np.array_equal(stored_mask, mask.numpy())
    assert npy(m[f"{keys[0]}.codes.npy"]).shape == (1, 8, 8)


def test_t2i_trains_on_code_shards_with_the_stored_caption_features(shards, code_run, encoder):
    out, batches = code_run
    m = members(shards / "codes" / "000000.tar", shards / "codes" / "000001.tar")
    by_codes = {npy(m[f"{k}.codes.npy"])[0].astype(np.int64).tobytes(): k for k in keys_of(m)}
    codes, cond = batches[0]
    assert isinstance(cond, Caption) and cond.features.shape == (4, 16, 64) and len(batches) == 2
    for row, key in enumerate(by_codes[c.numpy().tobytes()] for c in codes):  # each row with its own caption
        assert torch.equal(cond.features[row], torch.from_numpy(npy(m[f"{key}.capfeat.npy"])))
        assert torch.equal(cond.mask[row], torch.from_numpy(npy(m[f"{key}.capmask.npy"])))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2] and all(np.isfinite(e["loss"]) for e in log)
    assert all(e["val_cond_loss"] > 0 and e["val_null_loss"] > 0 for e in log)  # held-out samples, own captions
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["text_encoder"] == encoder.describe()
    assert (config["caption_dim"], config["caption_len"]) == (64, 16)
    state = json.loads(next((out / "checkpoints").glob("step*/training_state.json")).read_text())
    assert state["conditions"] == encoder.describe()


def test_t2i_encodes_image_shard_captions_on_the_fly_and_resume_refuses_another_text_encoder(
        shards, encoder, tmp_path, monkeypatch, capsys):
    from gft_tokens.train import engine

    run = tmp_path / "run"
    main = script_main("train_t2i.py")
    rec = Recorder(monkeypatch)
    argv = [*BASE, "--data", str(shards / "images" / "*.tar"), "--out", str(run)]
    main(argv)
    printed = capsys.readouterr().out
    assert f"captions encoded by {T5} on the fly" in printed and "flips off" in printed
    feats, mask = encoder.encode([caption(0, i) for i in range(COUNT)])
    cond = rec.batches[0][1]
    assert isinstance(cond, Caption) and cond.features.shape == (4, 16, 64)
    for row in range(4):  # every row is the encoding of one sample's caption
        assert any(torch.allclose(cond.features[row], feats[i], atol=1e-6) and torch.equal(cond.mask[row], mask[i])
                   for i in range(COUNT))

    other = build_shapes_t5(tmp_path / "other-t5", seed=1)  # the same type, width and length, other weights
    from gft_tokens.locks import LOCK_NAME

    def files():  # the run's files, but the lock every trainer takes on <out> (it holds the pid)
        return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK_NAME}

    before = files()
    monkeypatch.setattr(engine, "load_checkpoint", lambda *a, **k: pytest.fail("the checkpoint was loaded"))
    resumed = [a if a != str(T5) else str(other) for a in argv] + ["--resume"]
    refused(capsys, main, resumed, "cannot resume:", f"was trained with the text encoder {T5}",
            f"--text-encoder {other} is another one", "fingerprint")
    assert files() == before


def test_t2i_refuses_shards_without_captions_or_with_another_encoders_features(shards, code_run, tmp_path, capsys):
    main = script_main("train_t2i.py")
    m = members(shards / "codes" / "000000.tar")
    meta = json.loads((shards / "codes" / "dataset.json").read_text())
    plain = {k: v for k, v in meta.items() if k not in ("text_encoder", "captions", "count", "shards", "pattern")}
    write_shards(iter([{"__key__": k, "codes.npy": m[f"{k}.codes.npy"], "cls": m[f"{k}.cls"]} for k in keys_of(m)]),
                 tmp_path / "plain-codes", 12, plain)  # what extract_codes.py writes without --text-encoder
    images = members(shards / "images" / "000000.tar")
    write_shards(iter([{"__key__": k, "png": images[f"{k}.png"], "cls": images[f"{k}.cls"]} for k in keys_of(images)]),
                 tmp_path / "plain-images", 12, {"kind": "images", "num_classes": 10})
    out = tmp_path / "o"
    for data in ("plain-codes", "plain-images"):
        err = refused(capsys, main, [*BASE, "--data", str(tmp_path / data / "000000.tar"), "--out", str(out)],
                      "a t2i run needs captions; these shards have none —", "extract_codes.py --text-encoder")
        assert "dataset.json counts 0 captions" in err
    codes = str(shards / "codes" / "*.tar")
    refused(capsys, main, [*BASE, "--data", codes, "--val-data", str(tmp_path / "plain-codes" / "000000.tar"),
                           "--out", str(out)], "a t2i run needs captions; these shards have none")

    other = build_shapes_t5(tmp_path / "other-t5", seed=1)
    argv = [a if a != str(T5) else str(other) for a in BASE]
    refused(capsys, main, [*argv, "--data", codes, "--out", str(out)],
            f"the caption features in {codes} were made by the text encoder {T5}, not by this run's --text-encoder "
            f"{other}", "fingerprint", f"train with --text-encoder {T5}")

    # fine-tuning a model of caption width 64 on captions of width 32
    narrow = build_shapes_t5(tmp_path / "narrow-t5", d_model=32, d_kv=16, d_ff=64)
    argv = [a if a != str(T5) else str(narrow) for a in BASE]
    refused(capsys, main, [*argv, "--data", str(shards / "images" / "*.tar"), "--init-from", str(code_run[0] / "model"),
                           "--out", str(out)], f"text encoder {narrow} gives captions of 16 x 32, the model takes 16 x 64")
    assert not out.exists()


def test_a_class_conditional_run_reads_caption_shards_as_any_codes(shards, tmp_path):
    """The captions are ignored: a c2i stream gives class ids, and a c2i run trains on the t2i code shards."""
    from gft_tokens.tokenizers import load_tokenizer
    from gft_tokens.train.loop import TrainOptions, train

    pattern = str(shards / "codes" / "*.tar")
    stream = ShardStream(pattern, tokenizer=load_tokenizer(SHIPPED_VQ), rank=0, world=1, batch_size=6, workers=0)
    codes, labels = stream.next_batch()
    assert labels.dtype == torch.long and labels.shape == (6,) and stream.num_classes == 10
    summary = train("llamagen", TrainOptions(preset="GPT-nano", tokenizer=str(SHIPPED_VQ), data=pattern, steps=1,
                                             batch_size=4, save_every=0, zero_stage=0, data_workers=0,
                                             out=str(tmp_path / "c2i")))
    assert np.isfinite(summary["final_loss"]) and summary["skipped_samples"] == 0


def test_image_folder_caption_files_are_sharded_and_uncaptioned_images_refused_for_features(tmp_path, capsys):
    root = solid_image_folder(tmp_path / "folder", per_class=2, size=(32, 32))
    (root / "cat" / "0.txt").write_text("a red square\n")
    (root / "dog" / "1.txt").write_text("  \n")  # an empty caption file counts as none
    make = script_main("make_shards.py")
    for name, extra in (("kept", []), ("resized", ["--image-size", "16"])):  # original files, and re-encoded
        capsys.readouterr()
        make(["--source", str(root), "--out", str(tmp_path / name), *extra])
        assert "4 images in 1 shard(s) to" in capsys.readouterr().out
        m = members(tmp_path / name / "000000.tar")
        texts = {k: m[f"{k}.txt"].decode() for k in keys_of(m) if f"{k}.txt" in m}
        assert list(texts.values()) == ["a red square"]
        assert int(m[f"{next(iter(texts))}.cls"]) == 0  # beside the cat image it was written for
        assert json.loads((tmp_path / name / "dataset.json").read_text())["captions"] == 1

    extract = script_main("extract_codes.py")
    common = ["--tokenizer", str(SHIPPED_VQ), "--text-encoder", str(T5), "--out", str(tmp_path / "x")]
    refused(capsys, extract, ["--data", str(root), *common], f"3 of 4 images of {root} have no caption (first: ",
            ".txt beside it)", "or leave out --text-encoder")
    refused(capsys, extract, ["--data", str(tmp_path / "kept" / "*.tar"), *common], "3 of 4 samples of",
            "(its dataset.json counts 1 captions)")
    assert not (tmp_path / "x").exists()


def test_resume_accepts_the_same_text_encoder_moved_and_refuses_another(encoder):
    """The check behind --resume: records are compared without their path; a checkpoint from before records were
    kept compares the option."""
    from types import SimpleNamespace

    from gft_tokens.errors import GFTError
    from gft_tokens.families.t2i.adapter import T2IAdapter

    adapter, mine = T2IAdapter(), encoder.describe()
    moved = SimpleNamespace(text_encoder={**mine, "path": "/elsewhere/shapes-t5-tiny"})
    options = SimpleNamespace(text_encoder="/elsewhere/shapes-t5-tiny")
    adapter.check_resume({"conditions": mine}, moved, options, "ckpt")
    other = SimpleNamespace(text_encoder={**mine, "fingerprint": "0" * 16})
    with pytest.raises(GFTError, match="cannot resume: ckpt was trained with the text encoder .*fingerprint"):
        adapter.check_resume({"conditions": mine}, other, options, "ckpt")
    with pytest.raises(GFTError, match="trained with --text-encoder a, this run has --text-encoder /elsewhere"):
        adapter.check_resume({"options": {"text_encoder": "a"}}, moved, options, "ckpt")


def test_a_fine_tune_records_the_text_encoder_it_was_trained_with(tmp_path, encoder):
    """--init-from with another encoder of the same shape: the exported model names the fine-tune's encoder (the
    one generate.py must encode prompts with), not the source model's."""
    from gft_tokens.families import load_model
    from gft_tokens.text_encoder import describe_text_encoder

    main = script_main("train_t2i.py")
    main([*BASE, "--train-images", "8", "--objective", "cfg", "--out", str(tmp_path / "cfg")])
    other = build_shapes_t5(tmp_path / "other-t5", seed=1)
    main([*BASE, "--train-images", "8", "--init-from", str(tmp_path / "cfg" / "model"), "--text-encoder", str(other),
          "--out", str(tmp_path / "ft")])
    was, now = (load_model(tmp_path / r / "model").config.text_encoder for r in ("cfg", "ft"))
    assert was["fingerprint"] == encoder.describe()["fingerprint"]
    assert now["fingerprint"] == describe_text_encoder(other, fingerprint=True)["fingerprint"] != was["fingerprint"]
