"""The side-by-side harness runs end to end (its smoke shape, seconds): both engines train and the table is written."""
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
