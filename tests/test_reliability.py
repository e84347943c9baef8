"""Crash safety of training: SIGKILL + --resume replays the exact trajectory, checkpoints are atomic, a
non-finite loss stops the run (or skips the update) without harming the last good checkpoint."""

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, SHIPPED_VQ, child_env
from gft_tokens import GFTError
from gft_tokens.fs import atomic_dir, load_torch_file
from gft_tokens.families import load_model
from gft_tokens.train import checkpoints as CK
from gft_tokens.train import engine as E
from gft_tokens.train.loop import TrainOptions, train

# ---------------------------------------------------------------------------------------------------------------
# 1. SIGKILL at arbitrary steps, twice in one run, then --resume: the same run as one never interrupted
# ---------------------------------------------------------------------------------------------------------------
CLI = ["--preset", "GPT-nano", "--tokenizer", str(SHIPPED_VQ), "--train-images", "64", "--batch-size", "8",
       "--steps", "36", "--save-every", "5", "--keep-last", "2", "--log-every", "1", "--warmup-steps", "2",
       "--lr", "3e-3", "--ema", "--threads", "1", "--seed", "3"]


def _start(out: Path, *extra: str) -> subprocess.Popen:
    env = child_env(OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train_llamagen.py"), *CLI, "--out", str(out),
                             *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _logged_steps(out: Path) -> int:
    """The last step in train_log.jsonl (0 if none yet); a line being written may be incomplete."""
    try:
        lines = (out / "train_log.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError):
            continue
    return 0


def _kill_at(proc: subprocess.Popen, out: Path, step: int, timeout: float = 300) -> int:
    """SIGKILL ``proc`` as soon as it has logged ``step``; returns the last step it logged."""
    deadline = time.time() + timeout
    while _logged_steps(out) < step:
        assert proc.poll() is None, f"run ended before step {step}:\n{proc.stdout.read()}"
        assert time.time() < deadline, "run too slow"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, output
    return _logged_steps(out)


def _trace(out: Path) -> list[tuple]:
    return [(e["step"], e["loss"], e["own_loss"], e["lr"]) for e in map(json.loads, (out / "train_log.jsonl")
                                                                          .read_text().splitlines())]


def test_sigkill_twice_then_resume_equals_uninterrupted_run(tmp_path):
    ref_dir, run = tmp_path / "reference", tmp_path / "killed"
    reference = _start(ref_dir)  # runs alongside the first victim
    victim = _start(run)
    killed_at = [_kill_at(victim, run, 12)]
    victim = _start(run, "--resume")
    killed_at.append(_kill_at(victim, run, 27))
    final = _start(run, "--resume")
    out_final = final.communicate(timeout=600)[0]
    out_ref = reference.communicate(timeout=600)[0]
    assert reference.returncode == 0, out_ref
    assert final.returncode == 0, out_final

    # both kills landed mid-run, between checkpoints, and each resume replayed the steps after its checkpoint
    assert 12 <= killed_at[0] < 25 and 27 <= killed_at[1] < 36, killed_at
    resumed = [int(line.rsplit(" ", 1)[1]) for line in out_final.splitlines() if line.startswith("resumed from")]
    assert len(resumed) == 1 and resumed[0] % 5 == 0 and killed_at[1] - 10 < resumed[0] <= killed_at[1], out_final
    # the loss trace (own CE and LR too) is the uninterrupted one, step for step, exactly
    ref, got = _trace(ref_dir), _trace(run)
    assert [t[0] for t in got] == list(range(1, 37))
    assert got == ref
    # model, EMA, and so optimizer and RNG state too, end bit-identical
    for name in ("model", "model_ema"):
        a, b = load_file(ref_dir / name / "model.safetensors"), load_file(run / name / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # rotation kept the two newest; no temporary left behind by the killed processes
    assert [t for _, t in CK.checkpoint_tags(run / "checkpoints")] == ["step00000035", "step00000036"]
    assert (run / "checkpoints" / "latest").read_text() == "step00000036"
    leftovers = [p.name for p in run.rglob(".*") if p != run / ".lock"]  # the run's lock file stays, unlocked
    assert leftovers == [], leftovers


# ---------------------------------------------------------------------------------------------------------------
# 2. Atomic checkpoints: half-written or damaged directories are skipped with a message; rotation
# ---------------------------------------------------------------------------------------------------------------
def options(out, **kw):
    base = dict(preset="GPT-nano", tokenizer=str(SHIPPED_VQ), train_images=64, steps=4, batch_size=8, lr=3e-3,
                warmup_steps=1, save_every=2, keep_last=0, log_every=1, out=str(out))
    return TrainOptions(**{**base, **kw})


def losses(out):
    return [(e["step"], e.get("loss")) for e in map(json.loads, (Path(out) / "train_log.jsonl").read_text().splitlines())]


def test_half_written_and_damaged_checkpoints_are_skipped_with_a_message(tmp_path, capsys):
    run = tmp_path / "run"
    train("llamagen", options(run))  # checkpoints at steps 2 and 4
    root = run / "checkpoints"
    # a save killed half-way, a copied checkpoint without manifest, a truncated file, a dangling `latest`
    (root / ".tmp-step00000005").mkdir()
    (root / ".tmp-step00000005" / "mp_rank_00_model_states.pt").write_bytes(b"\0" * 100)
    shutil.copytree(root / "step00000004", root / "step00000008")
    (root / "step00000008" / "manifest.json").unlink()
    shutil.copytree(root / "step00000004", root / "step00000007")
    optim = root / "step00000007" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    optim.write_bytes(optim.read_bytes()[:1000])
    (root / "latest").write_text("step00000009")
    capsys.readouterr()

    train("llamagen", options(run, steps=6, resume=True))
    said = capsys.readouterr().out
    assert f"ignoring half-written checkpoint {root / '.tmp-step00000005'}" in said
    assert f"skipping incomplete checkpoint {root / 'step00000008'}: it has no manifest.json" in said
    assert (f"skipping incomplete checkpoint {root / 'step00000007'}: zero_pp_rank_0_mp_rank_00_optim_states.pt "
            "is truncated") in said
    assert "'latest' names 'step00000009', which is missing or incomplete; using step00000004" in said
    assert f"resumed from {root / 'step00000004'} at step 4" in said
    assert [step for step, _ in losses(run)] == [1, 2, 3, 4, 5, 6]
    assert not (root / ".tmp-step00000005").exists()  # cleaned by the next successful save


def test_no_usable_checkpoint_is_an_error_not_a_silent_restart(tmp_path):
    run = tmp_path / "run"
    train("llamagen", options(run, steps=2))
    model = run / "checkpoints" / "step00000002" / "mp_rank_00_model_states.pt"
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(GFTError, match=r"no usable checkpoint in .*step00000002: mp_rank_00_model_states.pt is "
                                       r"truncated or altered"):
        train("llamagen", options(run, steps=4, resume=True))


def test_keep_last_rotates_old_checkpoints(tmp_path):
    run = tmp_path / "run"
    train("llamagen", options(run, steps=7, save_every=1, keep_last=3))
    root = run / "checkpoints"
    assert [t for _, t in CK.checkpoint_tags(root)] == ["step00000005", "step00000006", "step00000007"]
    assert (root / "latest").read_text() == "step00000007"
    assert all(CK.verify(root / t) is None for _, t in CK.checkpoint_tags(root))
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []
    manifest = json.loads((root / "step00000007" / "manifest.json").read_text())
    assert manifest["step"] == 7 and "training_state.json" in manifest["files"]
    # the export matches the newest checkpoint's weights
    model = load_model(run / "model")
    saved = load_torch_file(root / "step00000007" / "mp_rank_00_model_states.pt")["module"]
    assert all(torch.equal(saved[k].float(), v) for k, v in model.state_dict().items())


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("killed mid-write")
    assert (target / "a.txt").read_text() == "one"
    # a temporary left by a process that died (a real, finished pid) is removed by the next write
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".model.tmp-{int(dead.stdout)}-x1y2"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


# ---------------------------------------------------------------------------------------------------------------
# 3. Non-finite loss: stop with the step named (checkpoint intact), or skip the update for real
# ---------------------------------------------------------------------------------------------------------------
def poison(monkeypatch, at_calls, how="loss"):
    """Make the objective's loss non-finite (``how="loss"``) or only its gradients (``"grad"``) on the given
    call numbers (call = (step - 1) * grad_accum + micro) — a stand-in for a diverging batch."""
    import gft_tokens.train.loop as loop

    real = loop.OBJECTIVES["gft"]
    calls = {"n": 0}

    def objective(*args, **kwargs):
        result = real(*args, **kwargs)
        n, calls["n"] = calls["n"], calls["n"] + 1
        if n in at_calls:
            loss = result.loss * float("nan") if how == "loss" else result.loss + torch.sqrt(result.loss - result.loss)
            result = dataclasses.replace(result, loss=loss)
        return result

    monkeypatch.setitem(loop.OBJECTIVES, "gft", objective)
    return lambda: monkeypatch.setitem(loop.OBJECTIVES, "gft", real)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    poison(monkeypatch, {2})  # step 3
    with pytest.raises(GFTError, match=r"non-finite loss at step 3 \(micro-batch 0\); the last good checkpoint in "
                                       r".*checkpoints is intact"):
        train("llamagen", options(run, steps=6))
    root = run / "checkpoints"
    assert CK.latest_tag(root) == "step00000002" and CK.verify(root / "step00000002") is None
    assert [e["step"] for e in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())] == [1, 2]
    load_model(run / "model")  # the step-2 export is intact


def test_nonfinite_parameters_are_never_saved(tmp_path, monkeypatch):
    # ZeRO-0 without clipping applies whatever gradients it gets: NaN gradients (finite loss) poison the weights;
    # the checkpoint at that step is refused and the previous one stays the newest
    run = tmp_path / "run"
    poison(monkeypatch, {2}, how="grad")
    with pytest.raises(GFTError, match="the parameters are not finite at step 3; not saving"):
        train("llamagen", options(run, steps=6, save_every=1, zero_stage=0, grad_clip=0.0))
    assert CK.latest_tag(run / "checkpoints") == "step00000002"


def test_nonfinite_gradients_found_by_deepspeed_stop_the_run(tmp_path, monkeypatch):
    poison(monkeypatch, {2}, how="grad")
    with pytest.raises(GFTError, match="non-finite gradients at step 3"):
        train("llamagen", options(tmp_path / "run", steps=6, zero_stage=1))


def _tensors(obj, prefix=""):
    if torch.is_tensor(obj):
        return {prefix: obj}
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _tensors(val, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, val in enumerate(obj) for k, v in _tensors(val, f"{prefix}/{i}").items()}
    return {}


def _state(ckpt: Path) -> dict:
    """Every tensor of a checkpoint (weights, optimizer moments and step counts, fp32 masters, EMA) but the RNG."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    out = {}
    for f in sorted(ckpt.glob("*.pt")):
        state = load_torch_file(f, allowed=[LossScaler, ZeroStageEnum, fragment_address])
        if f.name.startswith("rank_state"):
            state = {"ema": state.get("ema")}
        out.update(_tensors(state, f.name))
    return out


@pytest.mark.parametrize("stage", [0, 1, 3])
def test_skip_leaves_parameters_and_optimizer_state_untouched(tmp_path, monkeypatch, stage):
    from gft_tokens.train.loop import _lr_lambda

    run = tmp_path / "run"
    o = options(run, steps=5, grad_accum=2, zero_stage=stage, save_every=1, ema=True, on_nonfinite="skip")
    cure = poison(monkeypatch, {5})  # step 3, micro-batch 1: micro-batch 0's gradients are already accumulated
    summary = train("llamagen", o)
    root = run / "checkpoints"
    before, skipped, after = (_state(root / f"step0000000{s}") for s in (2, 3, 4))
    assert before.keys() == skipped.keys() and len(before) > 5
    assert all(torch.equal(before[k], skipped[k]) for k in before), [k for k in before
                                                                     if not torch.equal(before[k], skipped[k])]
    assert any(not torch.equal(skipped[k], after[k]) for k in skipped)  # training goes on after the skip
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert log[2] == {**log[2], "step": 3, "skipped": True, "skipped_total": 1} and "loss" not in log[2]
    assert all("skipped" not in e and e["loss"] == e["loss"] for e in log[:2] + log[3:])
    # the LR schedule still advanced on the skipped step: it is the step's, as in a run without a skip
    assert [e["lr"] for e in log] == pytest.approx([o.lr * _lr_lambda(o)(s) for s in range(1, 6)], rel=1e-12)
    assert summary["skipped_steps"] == 1
    # the count survives a resume
    cure()
    resumed = train("llamagen", dataclasses.replace(o, steps=6, resume=True))
    assert resumed["skipped_steps"] == 1


# ---------------------------------------------------------------------------------------------------------------
# 4. The tokenizer trainer: the same crash safety (plain torch, checkpoints beside the output)
# ---------------------------------------------------------------------------------------------------------------
TOKENIZER_RECIPE = """type: gft_vq_tokenizer
model: {channels: 16, channel_mult: [1, 2, 2], z_channels: 16, codebook_size: 64}
steps: 24
batch_size: 8
train_images: 64
eval_images: 16
eval_every: 6
warmup_steps: 2
save_every: 4
threads: 1
"""


def _start_tokenizer(recipe: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train_tokenizer.py"), "--config", str(recipe),
                             "--out", str(out), *extra], cwd=ROOT, env=child_env(OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_after_checkpoint(proc: subprocess.Popen, root: Path, step: int, timeout: float = 300) -> int:
    deadline = time.time() + timeout
    while not any(s >= step and CK.verify(root / t) is None for s, t in CK.checkpoint_tags(root)):
        assert proc.poll() is None, f"run ended before its step-{step} checkpoint:\n{proc.stdout.read()}"
        assert time.time() < deadline, "run too slow"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, output
    return CK.checkpoint_tags(root)[-1][0]


def test_tokenizer_sigkill_twice_then_resume_equals_uninterrupted_run(tmp_path):
    recipe = tmp_path / "vq.yaml"
    recipe.write_text(TOKENIZER_RECIPE)
    ref_out, out = tmp_path / "ref", tmp_path / "tok"
    root = tmp_path / "tok.checkpoints"
    reference = _start_tokenizer(recipe, ref_out)
    victim = _start_tokenizer(recipe, out)
    kills = [_kill_after_checkpoint(victim, root, 8)]
    victim = _start_tokenizer(recipe, out, "--resume")
    kills.append(_kill_after_checkpoint(victim, root, 16))
    final = _start_tokenizer(recipe, out, "--resume")
    said, said_ref = final.communicate(timeout=600)[0], reference.communicate(timeout=600)[0]
    assert final.returncode == 0 and reference.returncode == 0, (said, said_ref)
    assert 8 <= kills[0] < 24 and 16 <= kills[1] < 24, kills
    assert f"resumed from {root / CK.tag_of(kills[1])} at step {kills[1]}" in said

    a, b = load_file(ref_out / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def evals(d):
        # the dead-code restart counters count the restarts of the running process; the weights they led to are
        # compared bit for bit above
        return [{k: v for k, v in e.items() if k != "elapsed_s" and not k.startswith("dead_code_restarts")}
                for e in map(json.loads, (d / "train_log.jsonl").read_text().splitlines())]

    assert evals(out) == evals(ref_out) and [e["step"] for e in evals(out)] == [6, 12, 18, 24]
    assert not root.exists()  # the saved tokenizer supersedes its checkpoints
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "tok", "vq.yaml"]
