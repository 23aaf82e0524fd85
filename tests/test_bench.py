"""Benchmark harnesses run end to end on their smoke shapes (seconds): the side-by-side harness trains both engines and
writes its table; the real-shape step reports its phases and the records' share of the step."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_peer_harness_times_both_engines_on_its_smoke_shape():
    done = subprocess.run([sys.executable, "bench/peer_trl.py", "--shapes", "smoke", "--reps", "1", "--no-write",
                           "--engines", "ours-sdpg,trl-grpo"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| (ours-sdpg|trl-grpo) \| ([\d.]+) \|", done.stdout,
                                                                re.M)}
    assert set(rows) == {"ours-sdpg", "trl-grpo"} and all(v > 0 for v in rows.values())
    assert "Machine speed while it ran" in done.stdout


def test_the_real_shape_step_reports_the_records_share_on_its_dry_run():
    done = subprocess.run([sys.executable, "bench/real_shape.py", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    share = re.search(r"`time/records`\): ([\d.]+) s = \*\*([\d.]+)% of the step\*\*", done.stdout)
    assert share is not None, done.stdout[-2000:]
    assert float(share.group(1)) >= 0 and 0 <= float(share.group(2)) < 100
    assert "| per-token records |" in done.stdout  # the phase wrapper reached the builder the trainer calls
