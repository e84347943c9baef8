"""Every option of every script, fed the values that used to give tracebacks (issue 19, item 1).

Each script's parser is captured without running the script (``parse_args`` is intercepted), then every option is
tried in-process, in an empty working directory, together with an anchor argument that makes an accepted value
stop fast afterwards (a missing input, an unknown preset). A numeric option gets 0, −1, nan, inf, a huge value and
a string; an option with choices an unknown choice; a switch its on and off forms. The outcome must be exit 0 or
exit 2 with exactly one ``error:`` line on stderr: never a traceback, and never a new file.
"""

from __future__ import annotations

import argparse
import os

import pytest

from conftest import ROOT

TOKENIZER_RECIPE = str(ROOT / "configs" / "tokenizer" / "shapes-vq.yaml")
PROBE_RECIPE = ROOT / "configs" / "probe" / "shapes-probe.yaml"

# script -> the arguments every case starts with; each makes the run stop (exit 2) right after the options check
ANCHORS = {
    "generate.py": ["--ckpt", "missing/model"],
    "sweep.py": ["--gft", "missing/model", "--out", "sweep-out"],
    "bench_sampling.py": ["--preset", "NO-SUCH-PRESET"],
    "bench_training.py": ["--preset", "NO-SUCH-PRESET"],
    "plan_memory.py": ["--model", "NO-SUCH-PRESET"],
    "make_shards.py": ["--source", "missing-folder", "--out", "shards-out"],
    "extract_codes.py": ["--data", "shapes", "--tokenizer", "missing-tokenizer", "--out", "codes-out"],
    "evaluate.py": ["--samples", "missing.npz"],
    "train_tokenizer.py": ["--config", TOKENIZER_RECIPE, "--out", "blocker/tok"],
    "train_probe.py": ["--out", "blocker/probe"],
    "train_attr_probe.py": ["--out", "blocker/attr-probe"],
    "import_checkpoint.py": ["--format", "llamagen-gpt", "missing.pt", "import-out"],
    "train_llamagen.py": ["--preset", "NO-SUCH-PRESET"],
    "train_var.py": ["--preset", "NO-SUCH-PRESET"],
    "train_masked.py": ["--preset", "NO-SUCH-PRESET"],
    "train_mar.py": ["--preset", "NO-SUCH-PRESET"],
    "train_t2i.py": ["--preset", "NO-SUCH-PRESET"],
    "samples_to_npz.py": ["missing-folder", "--out", "npz-out/samples.npz"],
    "experiment_summary.py": ["--docs", "missing-docs"],
    "inspect_condition.py": ["--ckpt", "missing/model"],
}
HUGE = {int: str(10**12), float: "1e308"}
NO_NUMERIC_OPTIONS = {"experiment_summary.py", "inspect_condition.py"}  # folders and names only
NUMERIC_VALUES = ("0", "-1", "nan", "inf", "HUGE", "abc")


def script_main(name: str):
    """``main`` of scripts/<name>, imported once (registered in sys.modules, as dataclasses need)."""
    import importlib.util
    import sys

    key = f"walked_script_{name[:-3]}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "scripts" / name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key].main


class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def build_parser(script: str) -> argparse.ArgumentParser:
    """The parser ``scripts/<script>`` builds, caught at ``parse_args`` (nothing after it runs)."""
    main = script_main(script)
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = capture
    try:
        main(["--help"])
    except _Captured as caught:
        return caught.parser
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{script} never parsed its arguments")


def _numeric_type(action) -> type | None:
    t = action.type
    if t is None:
        return None
    name = getattr(t, "__name__", "")
    return {"int": int, "float": float}.get(name)


def cases(script: str, parser: argparse.ArgumentParser):
    anchored = set(ANCHORS[script])
    for action in parser._actions:
        flags = [s for s in action.option_strings if s.startswith("--")]
        if not flags or action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        flag = flags[0]
        if flag in anchored or flag == "--config":
            continue
        kind = _numeric_type(action)
        if isinstance(action, argparse.BooleanOptionalAction):
            yield flag, [flag]
            yield flag, ["--no-" + flag[2:]]
        elif action.nargs == 0:  # store_true / list-style switches
            yield flag, [flag]
        elif kind is not None:
            for v in NUMERIC_VALUES:
                yield flag, [flag, HUGE[kind] if v == "HUGE" else v]
        elif action.choices:
            yield flag, [flag, "no-such-choice"]
        elif flag == "--device":  # a device this torch lacks, and no device at all
            yield flag, [flag, "cuda:7"]
            yield flag, [flag, "no-such-device"]


def _files(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, dirs, fs in os.walk(root) for f in fs + dirs}


SCRIPTS = sorted(ANCHORS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_option_of(script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("a file where the output directory's parent should be")
    monkeypatch.setenv("GFT_TOKENS_NO_DOWNLOAD", "1")
    main = script_main(script)
    parser = build_parser(script)
    tried, problems = 0, []
    capsys.readouterr()
    for flag, extra in cases(script, parser):
        before = _files(tmp_path)
        argv = ANCHORS[script] + extra
        code = 0
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code or 0
        except BaseException as exc:  # a traceback: the bug this test exists for
            problems.append(f"{argv}: {type(exc).__name__}: {exc}")
            capsys.readouterr()
            continue
        finally:
            tried += 1
        err = capsys.readouterr().err.strip().splitlines()
        if os.environ.get("WALKER_VERBOSE"):
            print(code, extra, err[-1:] if err else "", file=os.sys.__stdout__)
        errors = [line for line in err if line.startswith("error:")]
        if code not in (0, 2):
            problems.append(f"{argv}: exit {code}")
        elif code == 2 and (len(errors) != 1 or any("Traceback" in line for line in err)):
            problems.append(f"{argv}: stderr {err[-5:]}")
        elif code == 2 and _files(tmp_path) != before:
            problems.append(f"{argv}: refused but created {sorted(_files(tmp_path) - before)}")
    print(f"{script}: {tried} option x value cases")
    COUNTS[script] = tried
    assert not problems, "\n".join(problems)
    assert tried > 0 or script in NO_NUMERIC_OPTIONS


COUNTS: dict[str, int] = {}


def test_the_walker_knows_every_script():
    assert set(ANCHORS) == {p.name for p in (ROOT / "scripts").glob("*.py")}
