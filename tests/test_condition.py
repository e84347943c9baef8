"""The condition report: class-embedding rows vs the β embedding, on any family's exported model."""

import json

import torch

from conftest import script_main
from gft_tokens.eval.condition import class_table, condition_report
from gft_tokens.families.llamagen.model import LlamaGen, llamagen_config


def _model(beta_embed=True):
    torch.manual_seed(0)
    return LlamaGen(llamagen_config("GPT-nano", vocab_size=16, grid_size=2, num_classes=3, beta_embed=beta_embed))


def test_a_fresh_gft_model_has_a_zero_beta_embedding_and_the_report_sees_it_grow():
    model = _model()
    table = class_table(model)
    assert table.shape == (4, model.config.dim) and torch.equal(table, model.cls_embedding.embedding_table.weight)
    fresh = condition_report(model)
    assert all(r["norm"] == 0.0 for r in fresh["beta"].values())  # zero-initialised last layer
    spread = (table[:3] - table[:3].mean(0)).norm(dim=1).mean().item()
    assert abs(fresh["class_spread"] - spread) < 1e-6
    with torch.no_grad():
        model.beta_embedder.mlp[-1].bias.fill_(1.0)  # a constant β embedding of norm √D
    grown = condition_report(model)
    d = model.config.dim
    assert all(abs(r["norm"] - d ** 0.5) < 1e-4 for r in grown["beta"].values())
    assert abs(grown["beta"]["0.5"]["ratio_to_class_spread"] - d ** 0.5 / spread) < 1e-3


def test_inspect_condition_script_reports_cfg_and_gft_models(tmp_path, capsys):
    main = script_main("inspect_condition.py")
    for name, beta_embed in (("gft", True), ("cfg", False)):
        _model(beta_embed).save_pretrained(tmp_path / name)
    main(["--ckpt", str(tmp_path / "gft"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert set(report["beta"]) == {"0.1", "0.25", "0.5", "1.0"}
    main(["--ckpt", str(tmp_path / "cfg")])
    assert "no β embedder" in capsys.readouterr().out
