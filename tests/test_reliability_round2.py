"""Issue 19: a run directory is never silently reused or shared, checkpoints carry content hashes, a full disk is
one sentence with nothing left behind, and option values are refused where they are declared."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from gft_tokens import GFTError
from gft_tokens.config import opt, resolve
from gft_tokens.fs import sha256_file
from gft_tokens.locks import run_lock
from gft_tokens.train import checkpoints as CK
from gft_tokens.train import engine as E
from gft_tokens.train.loop import TrainOptions, train
from test_reliability import options


# --- checkpoint content hashes ------------------------------------------------------------------------------------

def _fake_checkpoint(root, step, payload=b"optimizer moments " * 64):
    tmp = CK.begin(root, step)
    (tmp / "optim_states.pt").write_bytes(payload)
    (tmp / "training_state.json").write_text("{}")
    return CK.commit(root, step, keep_last=0)


def test_manifest_records_sha256_and_a_flipped_byte_is_refused(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    _fake_checkpoint(root, 1)
    good = _fake_checkpoint(root, 2)
    manifest = json.loads((good / CK.MANIFEST).read_text())
    assert len(manifest["files"]["optim_states.pt"]["sha256"]) == 64
    data = bytearray((good / "optim_states.pt").read_bytes())
    for i in (10, 500, 1000):  # three flipped bytes, same size: the size check alone passed this
        data[i] ^= 0xFF
    (good / "optim_states.pt").write_bytes(bytes(data))
    assert CK.verify(good) == ("optim_states.pt is corrupt or truncated: its content does not match the sha256 recorded when "
                               "it was saved")
    assert CK.latest_tag(root) == "step00000001"
    assert "skipping incomplete checkpoint" in capsys.readouterr().out


def test_old_size_only_manifests_still_verify(tmp_path):
    d = tmp_path / "step00000001"
    d.mkdir()
    (d / "a.pt").write_bytes(b"12345")
    (d / CK.MANIFEST).write_text(json.dumps({"step": 1, "files": {"a.pt": 5}}))
    assert CK.verify(d) is None


# --- the run directory: --resume or --overwrite, and a lock --------------------------------------------------------

def test_a_second_process_on_a_locked_run_dir_is_refused(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from gft_tokens.locks import run_lock\n"
                               "with run_lock(sys.argv[1]):\n  print('held', flush=True); time.sleep(60)", str(run)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GFTError, match=rf"{run} is in use: a trainer \(pid {holder.pid}\) is writing into it"):
            with run_lock(run):
                pass
        with pytest.raises(GFTError, match="is in use"):
            train("llamagen", options(run, steps=1, resume=True))
    finally:
        holder.kill()
        holder.wait()
    with run_lock(run):  # the kernel dropped the dead holder's lock: no stale lock file blocks anyone
        pass


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (run / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(GFTError, match=r"already holds a run \(train_log.jsonl\): pass --resume to continue it or "
                                       r"--overwrite to replace it"):
        train("llamagen", options(run, steps=1))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    with pytest.raises(GFTError, match="--resume and --overwrite contradict"):
        train("llamagen", options(run, steps=1, resume=True, overwrite=True))
    train("llamagen", options(run, steps=2, overwrite=True))
    assert [json.loads(x)["step"] for x in (run / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    assert (run / "notes.txt").read_text() == "mine"  # not the tool's: kept


# --- disk full ------------------------------------------------------------------------------------------------------

def test_disk_full_during_a_checkpoint_is_one_sentence_and_leaves_nothing(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_save = torch.save

    def full(obj, f, *a, **k):
        if ".tmp-step00000004" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(GFTError, match=r"disk full while writing .*\.tmp-step00000004 \(needs ~\d+ MB\)"):
        train("llamagen", options(run, steps=4))
    root = run / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step00000002"]  # no .tmp- left behind
    assert CK.verify(root / "step00000002") is None


def test_is_disk_full_recognises_torchs_runtime_error():
    from gft_tokens.fs import is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed "
                                     "writing file data/0: file write failed"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


# --- options checked where declared --------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,message", [
    ("lr", float("nan"), "option 'lr' must be a finite number in (0, inf), got nan"),
    ("lr", -1.0, "option 'lr' must lie in (0, inf), got -1.0"),
    ("beta1", 1.5, "option 'beta1' must lie in [0, 1), got 1.5"),
    ("ema_decay", 2.0, "option 'ema_decay' must lie in [0, 1), got 2.0"),
    ("log_every", 0, "option 'log_every' must lie in [1, inf), got 0"),
    ("threads", -1, "option 'threads' must lie in [0, 4096], got -1"),
    ("zero_stage", 5, "option 'zero_stage' must be one of [0, 1, 2, 3], got 5"),
])
def test_yaml_values_are_checked_where_declared(key, value, message):
    with pytest.raises(GFTError) as info:
        resolve(TrainOptions, {key: value}, where="train.yaml")
    assert str(info.value) == message


def test_opt_refuses_unknown_validation_keys():
    with pytest.raises(TypeError, match="unknown keys"):
        opt(1, "x", minimum=0)


@pytest.mark.parametrize("content,message", [
    ("[]", "must hold a JSON object, got list"),
    ('{"zero_optimization": {"stage": 5}}', "zero_optimization.stage must be one of 0, 1, 2, 3, got 5"),
])
def test_deepspeed_config_shape_and_stage(tmp_path, content, message):
    path = tmp_path / "ds.json"
    path.write_text(content)
    with pytest.raises(GFTError, match=message.replace("(", r"\(").replace(")", r"\)")):
        E.load_ds_config(path, None)


# --- a user's files are never replaced ------------------------------------------------------------------------------

def _snapshot(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("script,argv", [
    ("make_shards.py", ["--source", "shapes", "--count", "4", "--out", "{out}"]),
    ("extract_codes.py", ["--data", "shapes", "--count", "4", "--tokenizer", "{vq}", "--out", "{out}"]),
    ("import_checkpoint.py", ["--format", "llamagen-gpt", "missing.pt", "{out}"]),
])
def test_an_output_folder_with_a_users_files_is_refused(script, argv, tmp_path, capsys):
    from conftest import SHIPPED_VQ, script_main

    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    before = _snapshot(tmp_path)
    args = [a.format(out=out, vq=SHIPPED_VQ) for a in argv]
    with pytest.raises(SystemExit) as info:
        script_main(script)(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {out} already exists and holds files this tool did not write (thesis.tex); pass "
                   f"--overwrite to replace it, or choose another output directory"]
    assert _snapshot(tmp_path) == before


def test_make_shards_into_its_own_output_again_and_with_overwrite(tmp_path, capsys):
    from conftest import script_main

    main = script_main("make_shards.py")
    out = tmp_path / "shards"
    main(["--source", "shapes", "--count", "4", "--out", str(out)])
    main(["--source", "shapes", "--count", "4", "--out", str(out)])  # only its own files there: replaced
    (out / "notes.txt").write_text("x")
    main(["--source", "shapes", "--count", "4", "--out", str(out), "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["000000.tar", "dataset.json"]


def test_save_pretrained_refuses_a_folder_with_other_files(tmp_path, shipped_tokenizer):
    target = tmp_path / "tok"
    target.mkdir()
    (target / "keep.me").write_text("mine")
    with pytest.raises(GFTError, match=r"holds files this tool did not write \(keep.me\)"):
        shipped_tokenizer.save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == ["keep.me"]
    shipped_tokenizer.save_pretrained(target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "manifest.json", "model.safetensors"]


def test_import_refuses_non_finite_weights(tmp_path):
    from gft_tokens.importers import import_checkpoint
    from test_importers import official_gpt_shapes, random_state

    state = random_state(official_gpt_shapes(2, 64, 32, 5, 32))
    state["layers.1.feed_forward.w2.weight"][3, 5] = float("nan")
    src = tmp_path / "gpt.pt"
    torch.save({"model": state}, src)
    with pytest.raises(GFTError, match=r"gpt.pt: weight layers.1.feed_forward.w2.weight holds non-finite values"):
        import_checkpoint("llamagen-gpt", src, tmp_path / "out", grid_size=4, n_head=4)
    assert not (tmp_path / "out").exists()


# --- pairings checked up front --------------------------------------------------------------------------------------

def test_continuous_tokenizer_for_a_discrete_family_names_both(tmp_path):
    from conftest import ROOT

    kl = ROOT / "tokenizers" / "shapes-kl"
    with pytest.raises(GFTError, match=rf"the llamagen family needs a discrete \(VQ\) tokenizer, but {kl} is a .* "
                                       r"tokenizer with continuous tokens"):
        train("llamagen", options(tmp_path / "run", tokenizer=str(kl)))
    assert not (tmp_path / "run").exists()


def test_resume_pairings_ema_and_tokenizer_identity(tmp_path):
    run = tmp_path / "run"
    train("llamagen", options(run, steps=2))
    before = _snapshot(run)
    with pytest.raises(GFTError, match=r"cannot resume with --ema: .*step00000002 was saved without EMA weights"):
        train("llamagen", options(run, steps=4, resume=True, ema=True))
    tag = run / "checkpoints" / "step00000002" / E.TRAINING_STATE
    state = json.loads(tag.read_text())
    state["tokenizer"]["codebook_size"] = 4096  # as if trained with another tokenizer at the same path
    tag.write_text(json.dumps(state))
    manifest = tag.parent / CK.MANIFEST  # re-sealed, so that only the tokenizer differs
    m = json.loads(manifest.read_text())
    m["files"][tag.name] = {"size": tag.stat().st_size, "sha256": sha256_file(tag)}
    manifest.write_text(json.dumps(m))
    with pytest.raises(GFTError, match=r"cannot resume: .*step00000002 was trained with the tokenizer .*4096.*, "
                                       r"but --tokenizer .* is "):
        train("llamagen", options(run, steps=4, resume=True))
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if "step00000002/" not in k or k.endswith(".pt")} == \
        {k: v for k, v in before.items() if "step00000002/" not in k or k.endswith(".pt")}  # nothing else touched


def test_a_codes_shard_mixing_grid_sizes_names_both_shapes(tmp_path, shipped_tokenizer):
    import io

    import numpy as np

    from gft_tokens.data.shards import ShardStream, write_shards

    def sample(i, grid):
        buf = io.BytesIO()
        np.save(buf, np.zeros((1, grid, grid), dtype=np.int16))
        return {"__key__": f"{i:04d}", "codes.npy": buf.getvalue(), "cls": b"1"}

    write_shards(iter([sample(0, 8), sample(1, 8), sample(2, 16), sample(3, 8)]), tmp_path / "codes", 100,
                 {"kind": "codes", "num_classes": 10})
    stream = ShardStream(str(tmp_path / "codes" / "000000.tar"), tokenizer=shipped_tokenizer, rank=0, world=1,
                         batch_size=4, seed=0, workers=0, num_classes=10)
    stream.expect(shipped_tokenizer.codebook_size, (8, 8))
    with pytest.raises(GFTError, match=r"codes from .* mix shapes: a sample has shape \(16, 16\), expected \(8, 8\) "
                                       r"like the model"):
        stream.next_batch()


def test_a_config_json_that_is_not_an_object(tmp_path):
    from gft_tokens.tokenizers import load_tokenizer

    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "config.json").write_text("[1, 2]")
    with pytest.raises(GFTError, match=r"config.json must hold a JSON object of settings, got a list"):
        load_tokenizer(tmp_path / "tok")


def test_exported_weights_carry_sha256_and_a_flipped_byte_or_nan_is_refused(tmp_path, shipped_tokenizer):
    from gft_tokens.tokenizers import load_tokenizer

    target = shipped_tokenizer.save_pretrained(tmp_path / "tok")
    manifest = json.loads((target / "manifest.json").read_text())
    assert set(manifest["files"]) == {"config.json", "model.safetensors"}
    load_tokenizer(target)
    weights = target / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x01  # inside a tensor's bytes: safetensors itself would load it
    weights.write_bytes(bytes(data))
    with pytest.raises(GFTError, match=r"model.safetensors is corrupt or truncated: its content does not match the sha256 in"):
        load_tokenizer(target)
    state = {k: v.clone() for k, v in shipped_tokenizer.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = float("nan")
    shipped_tokenizer.save_pretrained(tmp_path / "nan", state_dict=state)
    with pytest.raises(GFTError, match=rf"tensor {name} holds non-finite values"):
        load_tokenizer(tmp_path / "nan")


def test_empty_batches_are_refused_in_one_line():
    from gft_tokens.families import build_model, sample_images
    from gft_tokens.tokenizers import load_tokenizer
    from conftest import SHIPPED_VQ

    tok = load_tokenizer(SHIPPED_VQ)
    with pytest.raises(GFTError, match="empty batch"):
        tok.encode(torch.zeros(0, 3, 32, 32))
    model = build_model("llamagen", "GPT-nano", vocab_size=tok.codebook_size, grid_size=8, num_classes=10)
    for labels in ([], torch.zeros(0, dtype=torch.long), None):
        with pytest.raises(GFTError, match="no class labels"):
            sample_images(model, tok, labels, beta=0.5)


def test_train_probe_refuses_a_folder_of_someone_elses_files_before_training(tmp_path):
    from gft_tokens.eval.probe import ProbeTrainOptions, train_probe

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not the probe's")
    with pytest.raises(GFTError, match="holds files this tool did not write"):
        train_probe(ProbeTrainOptions(out=str(tmp_path / "mine"), steps=1), log=lambda *_: None)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "not the probe's"
