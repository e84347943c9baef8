#!/usr/bin/env python
"""Summarise the GFT-vs-CFG experiment of every family: per-family tables, learning curves, one plot per question.

    python scripts/experiment_summary.py --docs docs/gft_vs_cfg --runs runs/gft_vs_cfg

Reads ``<docs>/<family>/results.json`` (the main sweep) and ``<docs>/<family>/curve-<steps>/results.json`` (the
learning-curve sweeps) written by ``scripts/experiment_gft_vs_cfg.sh``, and each run's ``train_log.jsonl`` under
``<runs>/<family>/`` for the training time. Writes ``<docs>/summary.md``, ``summary.json``,
``fid_vs_accuracy.png`` (one panel per family) and ``learning_curves.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gft_tokens.validate import ArgumentParser
from gft_tokens.errors import GFTError, cli_main
from gft_tokens.eval.sweep import best_rows, comparison
from gft_tokens.fs import atomic_file

RUN_DIRS = {"cfg": "cfg", "gft-scratch": "gft", "gft-paper": "gft-paper", "gft-finetune": "gft-ft"}
CURVE_RUNS = ("cfg", "gft-scratch", "gft-paper")  # the from-scratch runs


def _train_seconds(runs: Path, family: str, run: str) -> float | None:
    log = runs / family / RUN_DIRS.get(run, run) / "train_log.jsonl"
    if not log.is_file():
        return None
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    times = [e["elapsed_s"] for e in entries if "elapsed_s" in e]
    return times[-1] if times else None


def _class_value(runs: Path, family: str, run: str) -> list[dict]:
    """The held-out ``val_null_loss − val_cond_loss`` of a run along its steps: what the class is worth to it."""
    log = runs / family / RUN_DIRS.get(run, run) / "train_log.jsonl"
    if not log.is_file():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [{"step": e["step"], "value": e["val_null_loss"] - e["val_cond_loss"], "val_cond_loss": e["val_cond_loss"]}
            for e in entries if "val_null_loss" in e and "val_cond_loss" in e]


def _last_step(runs: Path, family: str, run: str) -> int | None:
    """The last optimizer step in a run's log (the main sweep's point of the learning curve)."""
    log = runs / family / RUN_DIRS.get(run, run) / "train_log.jsonl"
    if not log.is_file():
        return None
    steps = [json.loads(line).get("step") for line in log.read_text().splitlines() if line.strip()]
    steps = [x for x in steps if isinstance(x, int)]
    return max(steps) if steps else None


def _pm(v, s, pct=False, digits=2):
    if v is None:
        return "–"
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.{digits}f}")
    return f(v) + (f" ± {f(s)}" if s is not None else "")


def family_summary(docs: Path, runs: Path, family: str) -> dict | None:
    path = docs / family / "results.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    rows = result["rows"]
    best = best_rows(rows)
    curve = []
    for d in sorted((docs / family).glob("curve-*"), key=lambda p: int(p.name.split("-")[1])):
        if (d / "results.json").is_file():
            curve_rows = json.loads((d / "results.json").read_text())["rows"]
            curve.append({"steps": int(d.name.split("-")[1]), "best": best_rows(curve_rows)})
    steps = json.loads((runs / family / "cfg" / "model" / "config.json").read_text()).get("preset") \
        if (runs / family / "cfg" / "model" / "config.json").is_file() else None
    class_value = {run: v for run in CURVE_RUNS if (v := _class_value(runs, family, run))}
    final_steps = _last_step(runs, family, "cfg") or (max(p["steps"] for p in curve) * 2 if curve else None)
    return {"family": family, "preset": steps, "best": best, "checks": comparison(rows), "rows": rows, "curve": curve,
            "train_s": {run: _train_seconds(runs, family, run) for run in best}, "class_value": class_value,
            "final_steps": final_steps}


def markdown(summaries: list[dict]) -> str:
    lines = ["# GFT vs CFG, every family", "",
             "Best-FID setting of each model (FID and class accuracy ± one bootstrap standard deviation); verdicts "
             "call a difference only beyond two standard deviations of it. Goals: GFT FID ≤ 1.05 × CFG's, class "
             "accuracy within 1 point, NFE exactly half.", ""]
    for s in summaries:
        lines += [f"## {s['family']} ({s['preset']})", "",
                  "| model | setting | FID ↓ | class acc. % | IS | precision | recall | NFE / image | ms / image | train s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for run, r in s["best"].items():
            t = s["train_s"].get(run)
            lines.append(f"| {run} | {r['setting']} | {_pm(r['fid'], r.get('fid_std'))} | "
                         f"{_pm(r['class_accuracy'], r.get('class_accuracy_std'), pct=True)} | {r['is']:.2f} | "
                         f"{r['precision']:.3f} | {r['recall']:.3f} | {r['nfe_per_image']:g} | "
                         f"{1000 * r['s_per_image']:.1f} | {'–' if t is None else f'{t:.0f}'} |")
        lines += ["", "| GFT model | FID / CFG | FID verdict | acc. − CFG (points) | acc. verdict | NFE / CFG | goals met |",
                  "|---|---|---|---|---|---|---|"]
        for c in s["checks"]:
            met = "yes" if c["fid_ok"] and c["acc_ok"] and c["nfe_ok"] else "no"
            lines.append(f"| {c['run']} | {c['fid_ratio']:.3f} | {c['fid_verdict']} | {c['acc_diff_points']:+.1f} | "
                         f"{c['acc_verdict']} | {c['nfe_ratio']:.2f} | {met} |")
        if s["curve"]:
            runs = [r for r in CURVE_RUNS if any(r in p["best"] for p in s["curve"])]
            lines += ["", "Learning curve (best-FID setting per model; the last row is the main sweep):", "",
                      "| steps | " + " | ".join(f"{r} FID | {r} acc. %" for r in runs) + " |",
                      "|---|" + "---|---|" * len(runs)]
            final = s["final_steps"]
            for point in s["curve"] + [{"steps": final, "best": s["best"]}]:
                cell = lambda r, k, pct=False: _pm(r[k], r.get(k + "_std"), pct=pct) if r else "–"  # noqa: E731
                lines.append(f"| {point['steps']} | " + " | ".join(
                    f"{cell(point['best'].get(r), 'fid')} | {cell(point['best'].get(r), 'class_accuracy', True)}"
                    for r in runs) + " |")
        if s.get("class_value"):
            runs = list(s["class_value"])
            steps = sorted({e["step"] for v in s["class_value"].values() for e in v})
            by = {r: {e["step"]: e for e in v} for r, v in s["class_value"].items()}
            lines += ["", "What the class is worth to each model along training: held-out cross-entropy at the null "
                      "class minus at the true class (β = 1), nats per token (×1000):", "",
                      "| steps | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
            for st in steps:
                lines.append(f"| {st} | " + " | ".join(
                    f"{1000 * by[r][st]['value']:.1f}" if st in by[r] else "–" for r in runs) + " |")
        lines.append("")
    return "\n".join(lines)


def _label(ax, title: str | None, xlabel: str, ylabel: str) -> None:
    """A panel's title (when given), axis labels, light grid and a small legend."""
    if title is not None:
        ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_file(path) as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)


def plots(summaries: list[dict], docs: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(4.2 * len(summaries), 3.8), dpi=120, squeeze=False)
    for ax, s in zip(axes[0], summaries):
        for run in dict.fromkeys(r["run"] for r in s["rows"] if r["method"] != "reference"):
            pts = sorted((r for r in s["rows"] if r["run"] == run), key=lambda r: r["w_equiv"])
            ax.errorbar([100 * r["class_accuracy"] for r in pts], [r["fid"] for r in pts],
                        xerr=[100 * (r.get("class_accuracy_std") or 0) for r in pts],
                        yerr=[r.get("fid_std") or 0 for r in pts], marker="s" if pts[0]["method"] == "cfg" else "o",
                        capsize=2, label=f"{run} ({pts[0]['nfe_per_image']:g} NFE)")
        _label(ax, s["family"], "class accuracy (%)", "FID (probe) ↓")
    _save(fig, docs / "fid_vs_accuracy.png")

    with_value = [s for s in summaries if s.get("class_value")]
    if with_value:
        fig, axes = plt.subplots(1, len(with_value), figsize=(4.2 * len(with_value), 3.6), dpi=120, squeeze=False)
        for ax, s in zip(axes[0], with_value):
            for run, v in s["class_value"].items():
                ax.plot([e["step"] for e in v], [1000 * e["value"] for e in v], marker="o", label=run)
            _label(ax, s["family"], "training steps", "CE(null) − CE(class), mnats / token")
        _save(fig, docs / "class_value.png")

    with_curve = [s for s in summaries if s["curve"]]
    if not with_curve:
        return
    fig, axes = plt.subplots(2, len(with_curve), figsize=(4.2 * len(with_curve), 6.4), dpi=120, squeeze=False)
    for col, s in enumerate(with_curve):
        points = s["curve"] + [{"steps": s["final_steps"], "best": s["best"]}]
        for run in CURVE_RUNS:
            pts = [(p["steps"], p["best"][run]) for p in points if run in p["best"]]
            for row, key, scale in ((0, "fid", 1), (1, "class_accuracy", 100)):
                axes[row][col].errorbar([x for x, _ in pts], [scale * r[key] for _, r in pts],
                                        yerr=[scale * (r.get(key + "_std") or 0) for _, r in pts], marker="o",
                                        capsize=2, label=run)
        _label(axes[0][col], s["family"], "training steps", "best FID ↓")
        _label(axes[1][col], None, "training steps", "class accuracy at best FID (%)")
    _save(fig, docs / "learning_curves.png")



@cli_main
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", default="docs/gft_vs_cfg", help="the experiment's docs folder (default: docs/gft_vs_cfg)")
    p.add_argument("--runs", default="runs/gft_vs_cfg", help="the experiment's runs folder (default: runs/gft_vs_cfg)")
    p.add_argument("--families", nargs="+", default=["llamagen", "var", "masked", "mar", "t2i"],
                   help="families to summarise (those without results are left out; default: the four and t2i)")
    args = p.parse_args(argv)
    docs, runs = Path(args.docs), Path(args.runs)
    summaries = [s for s in (family_summary(docs, runs, f) for f in args.families) if s is not None]
    if not summaries:
        raise GFTError(f"no family results under {docs} (expected {docs}/<family>/results.json)")
    (docs / "summary.md").write_text(markdown(summaries))
    with atomic_file(docs / "summary.json", "w") as fh:
        json.dump([{k: v for k, v in s.items() if k != "rows"} for s in summaries], fh, indent=1)
    plots(summaries, docs)
    print(f"wrote {docs / 'summary.md'} ({', '.join(s['family'] for s in summaries)})")


if __name__ == "__main__":
    main()
