"""tools/gpu_suite.sh fits one device call and always leaves a summary (issue 30, item 5): its steps' limits
add up to at most 540 s, and summary.json is rewritten after every step (tools/gpu_summary.py)."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_suites_step_limits_add_up_to_at_most_540_seconds():
    script = (ROOT / "tools" / "gpu_suite.sh").read_text()
    limits = [int(x) for x in re.findall(r"^\s*run_step \w+ (\d+) ", script, flags=re.M)]
    assert len(limits) >= 10 and sum(limits) <= 540, limits
    assert 'tools/gpu_summary.py "$OUTDIR" "$SUITE_T0" >/dev/null' in script  # after every step


def summarise(out, *flags):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_summary.py"), str(out), str(time.time() - 5),
                           *flags], capture_output=True, text=True, timeout=300)


def test_the_summary_after_each_step_holds_the_steps_so_far_and_the_final_one_the_verdict(tmp_path):
    (tmp_path / "steps.tsv").write_text("build\t0\t51.7\ntests_cuda\t0\t16.3\n")
    assert summarise(tmp_path).returncode == 0
    partial = json.loads((tmp_path / "summary.json").read_text())
    assert partial["complete"] is False and partial["passed"] is True and "torch" not in partial
    assert [(s["step"], s["exit"], s["seconds"]) for s in partial["steps"]] == [("build", 0, 51.7),
                                                                               ("tests_cuda", 0, 16.3)]
    assert partial["total_seconds"] >= 5
    (tmp_path / "steps.tsv").write_text("build\t0\t51.7\ntests_cuda\t1\t16.3\n")
    (tmp_path / "bench_elbo_cuda.json").write_text('{"rows": [1]}')
    final = summarise(tmp_path, "--final")
    assert final.returncode == 1  # a step failed
    done = json.loads((tmp_path / "summary.json").read_text())
    assert done["complete"] is True and done["passed"] is False and done["bench_elbo_cuda"] == {"rows": [1]}
    assert "torch" in done and ("device" in done or "device_error" in done)


def test_a_summary_before_any_step_is_empty_not_an_error(tmp_path):
    assert summarise(tmp_path).returncode == 0
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == []
