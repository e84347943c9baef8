"""Scale: ZeRO configs, partitioned construction, activation checkpointing under ZeRO-3, a real 2-process ZeRO-3 run
through the DeepSpeed launcher (CPU, gloo), and the memory planner."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, SHIPPED_VQ, script_main
from gft_tokens.families import load_model
from gft_tokens.train import engine as E
from gft_tokens.train.loop import TrainOptions, train

NO_DROPOUT = {"token_dropout_p": 0.0, "resid_dropout_p": 0.0, "ffn_dropout_p": 0.0}
COMMON = dict(preset="GPT-nano", train_images=200, steps=3, grad_accum=1, lr=3e-3, warmup_steps=1, save_every=0,
              log_every=1, zero_stage=3)


def losses(run):
    return [json.loads(line)["loss"] for line in (Path(run) / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """ZeRO-3, one process, global batch 8, dropout off: the reference for the runs below."""
    out = tmp_path_factory.mktemp("one") / "run"
    train("llamagen", TrainOptions(**COMMON, tokenizer=str(SHIPPED_VQ), batch_size=8, model=NO_DROPOUT, out=str(out)))
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in E.CONFIG_DIR.glob("*.json")))
def test_zero_configs_are_valid_deepspeed_configs(name):
    from deepspeed.runtime.config import DeepSpeedConfig

    E.init_distributed()
    raw = E.load_ds_config(E.CONFIG_DIR / name, None)
    cfg = DeepSpeedConfig(E.finalize_ds_config(raw, micro_batch=4, grad_accum=2, world=1, grad_clip=1.0, bf16=True))
    assert cfg.zero_optimization_stage == raw["zero_optimization"]["stage"] and cfg.bfloat16_config.enabled
    offload = raw["zero_optimization"].get("offload_optimizer")
    assert (cfg.zero_config.offload_optimizer is not None) == (offload is not None)
    if "offload_param" in raw["zero_optimization"]:
        assert cfg.zero_config.offload_param.device == "cpu" and cfg.zero_optimization_stage == 3


def test_zero3_with_cpu_offload_in_bf16_trains(tmp_path):
    summary = train("llamagen", TrainOptions(**{**COMMON, "steps": 2, "zero_stage": None}, tokenizer=str(SHIPPED_VQ),
                                             batch_size=8, bf16=True, out=str(tmp_path / "run"),
                                             ds_config=str(E.CONFIG_DIR / "zero3_offload.json")))
    assert summary["zero_stage"] == 3 and all(math.isfinite(x) for x in losses(tmp_path / "run"))
    assert load_model(tmp_path / "run" / "model").tok_embeddings.weight.dtype == torch.float32


def test_a_gpt_3b_width_model_is_built_partitioned():
    """Under ZeRO-3 every parameter is a placeholder right after construction; its data lives in the rank's
    partition (ds_tensor, 1/world of it)."""
    import deepspeed

    from gft_tokens.families.llamagen.model import LlamaGen, llamagen_config

    rank, world = E.init_distributed()
    cfg = llamagen_config("GPT-3B", n_layer=2, vocab_size=16384, grid_size=24, num_classes=1000)
    ds_cfg = E.finalize_ds_config(E.load_ds_config(None, 3), micro_batch=1, grad_accum=1, world=world,
                                  grad_clip=1.0, bf16=False)
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in LlamaGen(cfg).named_parameters()}
    with deepspeed.zero.Init(config_dict_or_path=ds_cfg):
        model = LlamaGen(cfg)
    params = dict(model.named_parameters())
    assert params.keys() == shapes.keys()
    for name, p in params.items():
        assert p.numel() == 0, name  # nothing whole outside the partition
        assert p.ds_shape == shapes[name] and p.ds_tensor.numel() == math.ceil(p.ds_numel / world), name
    assert params["layers.0.attention.wqkv.weight"].ds_shape == (9600, 3200)
    assert params["layers.1.feed_forward.w1.weight"].ds_shape == (8704, 3200)
    assert sum(p.ds_numel for p in params.values()) == sum(math.prod(s) for s in shapes.values())
    del model, params


def test_grad_checkpointing_under_zero3_recomputes_blocks_and_keeps_the_losses(tmp_path, one_process_run,
                                                                                monkeypatch):
    import torch.utils.checkpoint as ckpt

    real, calls = ckpt.checkpoint, []

    def counting(fn, *args, **kwargs):
        calls.append(type(fn).__name__)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(ckpt, "checkpoint", counting)
    train("llamagen", TrainOptions(**COMMON, tokenizer=str(SHIPPED_VQ), batch_size=8, model=NO_DROPOUT,
                                   grad_checkpointing=True, out=str(tmp_path / "run")))
    assert calls == ["Block"] * (2 * 3)  # GPT-nano's 2 blocks, once per training forward (not the no-grad pass)
    assert losses(tmp_path / "run") == pytest.approx(losses(one_process_run), abs=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_zero3_matches_one_process_and_exports_full_weights(tmp_path, one_process_run):
    """`deepspeed --num_gpus 2 scripts/train_llamagen.py` on this CPU: two gloo ranks, ZeRO-3, activation
    checkpointing, micro-batch 4 each = the reference's global batch 8."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    (tmp_path / "run.yaml").write_text(json.dumps({"model": NO_DROPOUT}))  # JSON is YAML
    out = tmp_path / "run"
    args = ["--config", str(tmp_path / "run.yaml"), "--tokenizer", str(SHIPPED_VQ), "--batch-size", "4",
            "--grad-checkpointing", "--threads", "1", "--out", str(out)]
    for key, value in COMMON.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
                           str(_free_port()), str(ROOT / "scripts" / "train_llamagen.py"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"family"')))
    assert summary["world_size"] == 2 and summary["zero_stage"] == 3
    total, held = summary["params"], summary["params_per_rank"]
    print(f"\nparameters per rank {held} of {total}; losses 2 ranks {losses(out)} vs 1 rank {losses(one_process_run)}")
    assert len(held) == 2 and all(abs(h - total / 2) <= 0.01 * total for h in held)  # each rank: about half
    assert losses(out) == pytest.approx(losses(one_process_run), abs=2e-4)

    assert (out / "checkpoints" / "zero_to_fp32.py").is_file()  # DeepSpeed's consolidation script, for users
    exported = load_model(out / "model").eval()  # gathered by rank 0 from both partitions
    from_zero = load_model(out / "model").eval()
    from_zero.load_state_dict(get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints")), strict=True)
    reference = load_model(one_process_run / "model").eval()
    codes, labels, beta = torch.randint(1024, (3, 64)), torch.tensor([0, 4, 10]), torch.tensor([0.2, 0.6, 1.0])
    logits = exported(codes, labels, beta)
    assert torch.equal(logits, from_zero(codes, labels, beta))
    assert torch.allclose(logits, reference(codes, labels, beta), atol=1e-3)


def test_plan_memory_for_gpt_3b_on_8_gpus(capsys):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    main = script_main("plan_memory.py")
    capsys.readouterr()  # what importing DeepSpeed above printed is not the script's output
    main(["--model", "GPT-3B", "--gpus", "8", "--nodes", "1", "--json"])
    plan = json.loads(capsys.readouterr().out)
    assert plan["params"] == 3_107_724_800  # LlamaGen's 3.097B + the β embedder
    assert plan["largest_layer"]["name"] in ("tok_embeddings", "output")
    assert plan["largest_layer"]["params"] == 16384 * 3200
    rows = {(r["stage"], r["offload"]): r for r in plan["rows"]}
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(plan["params"], 16384 * 3200, 8, 1, cpu_offload=False,
                                                        cpu_offload_params=False, zero_init=True)
    assert rows[(3, "none")]["gpu"] == gpu and rows[(3, "none")]["cpu"] == cpu
    assert rows[(0, "none")]["gpu"] > rows[(1, "none")]["gpu"] > rows[(2, "none")]["gpu"] > rows[(3, "none")]["gpu"]
    act = plan["activations"]
    assert act["tokens"] == 576 and act["micro_batch"] == 16
    assert act["total"] == act["stem"] + 24 * act["per_block"] + act["head"] > 10 * act["total_grad_checkpointing"]
    main(["--model", "GPT-3B", "--gpus", "8"])
    assert "| 3    | optimizer+params |" in capsys.readouterr().out


def test_activation_measurement_on_fake_tensors_equals_real_tensors():
    """The planner's shape-only measurement saves exactly what a real forward saves (small model, real CPU)."""
    import importlib.util

    from gft_tokens.families.llamagen.model import Block, llamagen_config
    from gft_tokens.nn import rope_2d_table, rope_cis

    spec = importlib.util.spec_from_file_location("plan_memory", ROOT / "scripts" / "plan_memory.py")
    pm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pm)
    cfg = llamagen_config("GPT-nano", vocab_size=64, grid_size=4, num_classes=10)
    fake = pm.llamagen_activations(cfg, micro_batch=3, dtype=torch.float32)
    block = Block(cfg, 0, 0.0).train()
    cos, sin = rope_2d_table(4, cfg.head_dim, cfg.rope_base, 1)
    x = torch.randn(3, 16, cfg.dim, requires_grad=True)
    assert pm._saved_bytes(lambda: block(x, rope_cis(cos[:16], sin[:16])), [block]) == fake["per_block"] > 0
