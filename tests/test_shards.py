"""webdataset shards: make_shards / extract_codes, the sharded training stream, and its errors."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from conftest import SHIPPED_VQ, script_main, solid_image_folder
from gft_tokens import GFTError
from gft_tokens.data.shards import ShardStream, decode_image, expand_shards, image_views, to_tensor, write_shards
from gft_tokens.train.loop import TrainOptions, train


def members(path):
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


@pytest.fixture(scope="module")
def shapes_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "shapes"
    script_main("make_shards.py")(["--source", "shapes", "--count", "60", "--shard-size", "20", "--out", str(out)])
    return out


def test_make_shards_from_the_embedded_data(shapes_shards):
    meta = json.loads((shapes_shards / "dataset.json").read_text())
    assert meta["kind"] == "images" and meta["count"] == 60 and meta["shards"] == 3 and meta["num_classes"] == 10
    files = expand_shards(str(shapes_shards / meta["pattern"]))
    assert [f.rsplit("/", 1)[1] for f in files] == ["000000.tar", "000001.tar", "000002.tar"]
    m = members(files[0])
    assert len(m) == 80 and {"00000000.png", "00000000.cls", "00000000.json", "00000000.txt"} <= set(m)
    assert meta["captions"] == 60  # each sample's caption rides along (tests/test_t2i_shards.py)
    from gft_tokens.data import ShapesDataset

    ds = ShapesDataset(60, seed=0)
    image, label = ds[0]
    assert int(m["00000000.cls"]) == label
    assert (to_tensor(decode_image(m["00000000.png"])) - image).abs().max() <= 1 / 127.5  # 8-bit PNG
    # each sample's attributes ride along as <key>.json (the readers below and in training ignore the member)
    for i in (0, 7, 19):
        meta = json.loads(m[f"{i:08d}.json"])
        assert meta == ds.metadata(i) and meta["label"] == int(m[f"{i:08d}.cls"])
        assert {"shape", "colour", "size", "position", "raw"} <= meta.keys()


def test_make_shards_from_an_image_folder_keeps_files_and_skips_unreadable(tmp_path, capsys):
    root = solid_image_folder(tmp_path / "folder", per_class=3, size=(40, 30))
    (root / "dog" / "broken.png").write_bytes(b"not an image")
    script_main("make_shards.py")(["--source", str(root), "--out", str(tmp_path / "out"), "--shard-size", "4"])
    printed = capsys.readouterr().out
    assert "6 images in 2 shard(s)" in printed and "1 unreadable skipped" in printed
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["class_names"] == ["cat", "dog"] and meta["count"] == 6
    m = {**members(tmp_path / "out" / "000000.tar"), **members(tmp_path / "out" / "000001.tar")}
    labels = {k[:-4]: int(v) for k, v in m.items() if k.endswith(".cls")}
    for key, label in labels.items():
        assert decode_image(m[key + ".png"]).getpixel((0, 0)) == ((255, 0, 0) if label == 0 else (0, 0, 255))
        assert decode_image(m[key + ".png"]).size == (40, 30)  # stored as they are
    with pytest.raises(SystemExit) as exc:
        script_main("make_shards.py")(["--source", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert exc.value.code == 2 and not (tmp_path / "x").exists()


def test_extract_codes_flip_and_ten_crop(shapes_shards, tmp_path, shipped_tokenizer):
    pattern = str(shapes_shards / "{000000..000002}.tar")
    main = script_main("extract_codes.py")
    main(["--data", pattern, "--tokenizer", str(SHIPPED_VQ), "--out", str(tmp_path / "flip"), "--count", "8"])
    main(["--data", pattern, "--tokenizer", str(SHIPPED_VQ), "--out", str(tmp_path / "ten"), "--count", "8",
          "--ten-crop"])
    images = members(shapes_shards / "000000.tar")
    for name, views in (("flip", 2), ("ten", 10)):
        meta = json.loads((tmp_path / name / "dataset.json").read_text())
        assert meta["kind"] == "codes" and meta["views"] == views and meta["count"] == 8
        assert meta["tokenizer"]["codebook_size"] == 1024 and meta["num_classes"] == 10
        m = members(tmp_path / name / "000000.tar")
        codes = np.load(io.BytesIO(m["00000003.codes.npy"]))
        assert codes.shape == (views, 8, 8) and int(m["00000003.cls"]) == int(images["00000003.cls"])
        image = decode_image(images["00000003.png"])
        expected = shipped_tokenizer.encode(image_views(image, 32, ten_crop=name == "ten"))
        assert np.array_equal(codes, expected.numpy())
    v = image_views(image, 32, ten_crop=True)
    assert torch.equal(v[5:], torch.flip(v[:5], dims=[-1]))  # the second five are the flipped first five
    assert torch.equal(image_views(image, 32)[1], torch.flip(image_views(image, 32)[0], dims=[-1]))


def _id_shards(root, n_shards=4, per_shard=6, meta=True):
    """Codes shards whose sample i holds codes filled with i (so a batch shows which samples it drew)."""

    def samples():
        for i in range(n_shards * per_shard):
            buf = io.BytesIO()
            np.save(buf, np.full((1, 8, 8), i, dtype=np.int16))
            yield {"__key__": f"{i:08d}", "codes.npy": buf.getvalue(), "cls": str(i % 10).encode()}

    write_shards(samples(), root, per_shard, {"kind": "codes", "num_classes": 10} if meta else {})
    return str(root / f"{{000000..{n_shards - 1:06d}}}.tar")


def ids(codes):
    return codes[:, 0, 0].tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_splits_by_rank_and_worker_and_resumes_exactly(tmp_path, shipped_tokenizer, workers):
    pattern = _id_shards(tmp_path / "ids")
    seen = []
    for rank in (0, 1):
        s = ShardStream(pattern, tokenizer=shipped_tokenizer, rank=rank, world=2, batch_size=4, seed=1,
                        workers=workers, buffer=4)
        s.start(0)
        epoch = sum((ids(s.next_batch()[0]) for _ in range(3)), [])  # 12 samples = this rank's 2 shards
        assert sorted(epoch) == sorted(set(epoch)) and len(epoch) == 12
        seen.append(set(epoch))
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(24))

    def batches(skip, n):
        s = ShardStream(pattern, tokenizer=shipped_tokenizer, rank=0, world=2, batch_size=4, seed=1,
                        workers=workers, buffer=4)
        s.start(skip)
        return [s.next_batch() for _ in range(n)]

    full = batches(0, 7)
    resumed = batches(4 * 4, 3)  # a run resumed after 4 micro-batches of this rank
    for a, b in zip(full[4:], resumed):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    order = [ids(c) for c, _ in full]
    assert order[:3] != order[3:6]  # a new shuffle every epoch


def test_training_on_image_and_code_shards_counts_unreadable_samples(shapes_shards, tmp_path, shipped_tokenizer):
    base = dict(preset="GPT-nano", tokenizer=str(SHIPPED_VQ), steps=2, batch_size=8, save_every=0, log_every=1,
                data_workers=0, warmup_steps=1)
    # images: 20 good samples, 10 undecodable ones and one without a class, in one shard without dataset.json
    good = members(shapes_shards / "000000.tar")
    pngs = sorted(k for k in good if k.endswith(".png"))
    samples = [{"__key__": k[:-4], "png": good[k], "cls": good[k[:-4] + ".cls"]} for k in pngs]
    samples += [{"__key__": f"bad{i}", "png": b"garbage", "cls": b"3"} for i in range(10)]
    samples += [{"__key__": "nocls", "png": good[pngs[0]]}]
    write_shards(iter(samples), tmp_path / "mixed", 100, {})
    summary = train("llamagen", TrainOptions(**base, data=str(tmp_path / "mixed" / "000000.tar"), num_classes=10,
                                             out=str(tmp_path / "a")))
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(np.isfinite(e["loss"]) for e in log)
    assert summary["skipped_samples"] == log[-1]["skipped_samples"] >= 2  # the class-less one + undecodable ones

    pattern = str(tmp_path / "codes" / "{000000..000001}.tar")
    script_main("extract_codes.py")(["--data", str(shapes_shards / "*.tar"), "--tokenizer", str(SHIPPED_VQ),
                                     "--out", str(tmp_path / "codes"), "--count", "40", "--shard-size", "20"])
    summary = train("llamagen", TrainOptions(**base, data=pattern, out=str(tmp_path / "b")))
    assert summary["skipped_samples"] == 0 and np.isfinite(summary["final_loss"])


def test_shard_errors_are_clear(tmp_path, shipped_tokenizer, shapes_shards):
    def stream(spec, **kw):
        return ShardStream(spec, tokenizer=shipped_tokenizer, rank=0, world=1, batch_size=2, **kw)

    with pytest.raises(GFTError, match="matches no files"):
        stream(str(tmp_path / "none-*.tar"))
    with pytest.raises(GFTError, match=r"1 shard\(s\) .* do not exist: .*000003.tar"):
        stream(str(shapes_shards / "{000000..000003}.tar"))
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(GFTError, match="empty.tar is not a readable tar file|empty.tar is empty"):
        stream(str(tmp_path / "empty.tar"))
    with tarfile.open(tmp_path / "nomembers.tar", "w"):
        pass
    with pytest.raises(GFTError, match="is empty|not a readable tar"):
        stream(str(tmp_path / "nomembers.tar"))
    (tmp_path / "corrupt.tar").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(GFTError, match="corrupt.tar is not a readable tar file"):
        stream(str(tmp_path / "corrupt.tar"))
    write_shards(iter([{"__key__": "a", "png": members(shapes_shards / "000000.tar")["00000000.png"]}]),
                 tmp_path / "nocls", 10, {})
    with pytest.raises(GFTError, match="no 'cls' entry.*'a'.*\\['png'\\]"):
        stream(str(tmp_path / "nocls" / "000000.tar"), num_classes=10)
    ids_pattern = _id_shards(tmp_path / "nometa", n_shards=1, meta=False)
    with pytest.raises(GFTError, match="number of classes is unknown.*--num-classes"):
        stream(ids_pattern)
    with pytest.raises(GFTError, match="cannot be split over 2 processes"):
        ShardStream(ids_pattern, tokenizer=shipped_tokenizer, rank=0, world=2, batch_size=2, num_classes=10)
    meta_path = tmp_path / "ids" / "dataset.json"
    _id_shards(tmp_path / "ids", n_shards=1)
    meta_path.write_text(json.dumps({"kind": "codes", "num_classes": 10, "tokenizer": {"codebook_size": 512}}))
    with pytest.raises(GFTError, match="made by a tokenizer with codebook_size 512"):
        stream(str(tmp_path / "ids" / "000000.tar"))
    s = stream(ids_pattern, num_classes=10, workers=0)
    s.expect(1024, (4, 4))
    with pytest.raises(GFTError, match="a sample has shape \\(8, 8\\), expected \\(4, 4\\) like the model"):
        s.next_batch()
