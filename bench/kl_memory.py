"""Peak memory, time and accuracy of the fused full-vocabulary KL against the plain full-logits path.

    python bench/kl_memory.py                      # V = 151936, H = 1024, N in {256, 1024, 4096}
    python bench/kl_memory.py --n 256 --repeats 3  # a quicker look

Both paths compute, per token, KL(p_student || q_teacher) over the whole vocabulary, the student's
log-prob of the sampled token and its entropy, then backpropagate a weighted sum of the three into
the student hidden states and the LM head weight.
- plain: student and teacher logits materialised (N, V), log_softmax, KL, gather, entropy, backward.
- fused: `sdpg.losses.fused_self_distill`, tile by tile from hidden states.

Design choices:
- Each (path, N) runs in a fresh subprocess; peak extra memory = `ru_maxrss` at the end minus the
  resident memory once the inputs exist (after a tiny run of the same path has loaded every kernel).
  It includes the (V, H) weight gradient, which both paths must produce.
- One warm-up, then `--repeats` timed runs; the median is reported.
- Accuracy: max |fused - plain| / max |plain| for each output and gradient, in float32, plus both
  paths' error against a float64 plain computation on the first tokens.
- The markdown table replaces only its own section of bench/RESULTS.md.

Shapes: N tokens, H hidden size, V vocabulary.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sdpg.losses import fused_self_distill  # noqa: E402

SECTION = "## Fused full-vocabulary KL (CPU, float32)"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
NAMES = ("kl", "logp", "entropy", "grad_hidden", "grad_weight")
REF_TOKENS = 256
"""tokens compared against a float64 computation"""


def make_inputs(n: int, vocab: int, hidden: int, seed: int = 0):
    """Hidden states and a weight with LM-like logit spread (std ~2); the teacher is a perturbed student."""
    g = torch.Generator().manual_seed(seed)
    weight = (0.02 * torch.randn(vocab, hidden, generator=g)).requires_grad_()  # (V, H)
    student = (3.0 * torch.randn(n, hidden, generator=g)).requires_grad_()  # (N, H)
    teacher = student.detach() + 1.5 * torch.randn(n, hidden, generator=g)  # (N, H)
    tokens = torch.randint(0, vocab, (n,), generator=g)  # (N,)
    out_weights = torch.rand(3, n, generator=g)  # (3, N) upstream gradient of kl, logp, entropy
    return student, teacher, weight, tokens, out_weights


def plain_path(student, teacher, weight, tokens):
    """The full-logits computation: (N, V) student and teacher logits, then log_softmax."""
    log_p = F.log_softmax(student @ weight.T, -1)  # (N, V)
    with torch.no_grad():
        log_q = F.log_softmax(teacher @ weight.T, -1)  # (N, V)
    p = log_p.exp()  # (N, V)
    kl = (p * (log_p - log_q)).sum(-1)  # (N,)
    logp = log_p.gather(-1, tokens[:, None]).squeeze(-1)  # (N,)
    entropy = -(p * log_p).sum(-1)  # (N,)
    return kl, logp, entropy


def fused_path(student, teacher, weight, tokens, token_chunk=None, vocab_chunk=None):
    chunks = {k: v for k, v in (("token_chunk", token_chunk), ("vocab_chunk", vocab_chunk)) if v}
    return fused_self_distill(student, teacher, weight, tokens, **chunks)


def run_once(path, inputs):
    """Forward and backward of one path; returns (outputs, grads, forward s, backward s)."""
    student, teacher, weight, tokens, out_weights = inputs
    student.grad, weight.grad = None, None
    t0, cpu0 = time.perf_counter(), time.process_time()
    outs = path(student, teacher, weight, tokens)
    t1 = time.perf_counter()
    sum((o * w).sum() for o, w in zip(outs, out_weights)).backward()
    t2, cpu2 = time.perf_counter(), time.process_time()
    return [o.detach() for o in outs], (student.grad, weight.grad), (t1 - t0, t2 - t1, cpu2 - cpu0)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rss_mib() -> float:
    """Resident memory now (not the high-water mark, which remembers temporaries of input building)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


def worker(args) -> dict:
    """One (path, N) configuration in this fresh process; prints a JSON record."""
    if args.max_gib:
        # fail with an allocation error rather than push a shared machine into the OOM killer
        limit = int(args.max_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    path = plain_path if args.path == "plain" else (
        lambda *x: fused_path(*x, token_chunk=args.token_chunk, vocab_chunk=args.vocab_chunk))
    run_once(path, make_inputs(8, 1000, args.hidden, seed=1))  # load kernels and thread pools
    inputs = make_inputs(args.n, args.vocab, args.hidden)
    baseline = rss_mib()
    times = [run_once(path, inputs)[2] for _ in range(args.repeats + 1)][1:]
    record = {"path": args.path, "n": args.n, "peak_extra_mib": max_rss_mib() - baseline,
              "fwd_s": statistics.median(t[0] for t in times), "bwd_s": statistics.median(t[1] for t in times),
              "total_s": statistics.median(t[0] + t[1] for t in times),
              "cpu_s": statistics.median(t[2] for t in times)}
    if args.path == "plain":
        record |= accuracy(inputs, args)
    return record


def accuracy(inputs, args) -> dict:
    """Fused vs plain on all tokens (float32), and both vs float64 on the first REF_TOKENS tokens."""
    fused = lambda *x: fused_path(*x, token_chunk=args.token_chunk, vocab_chunk=args.vocab_chunk)  # noqa: E731
    plain_outs, plain_grads, *_ = run_once(plain_path, inputs)
    fused_outs, fused_grads, *_ = run_once(fused, inputs)
    vs_plain = [rel_err(f, p) for f, p in zip((*fused_outs, *fused_grads), (*plain_outs, *plain_grads))]
    k = min(REF_TOKENS, args.n)
    student, teacher, weight, tokens, out_weights = inputs

    def head(dtype):
        return (student.detach()[:k].to(dtype).requires_grad_(), teacher[:k].to(dtype),
                weight.detach().to(dtype).requires_grad_(), tokens[:k], out_weights[:, :k].to(dtype))

    ref_outs, ref_grads, *_ = run_once(plain_path, head(torch.float64))
    errs = {}
    for name, path in (("plain", plain_path), ("fused", fused)):
        outs, grads, *_ = run_once(path, head(torch.float32))
        errs[name] = [rel_err(a, b) for a, b in zip((*outs, *grads), (*ref_outs, *ref_grads))]
    return {"rel_err_fused_vs_plain": vs_plain, "rel_err_vs_f64": errs, "ref_tokens": k}


def run_config(path: str, n: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--path", path, "--n", str(n), "--vocab", str(args.vocab),
           "--hidden", str(args.hidden), "--repeats", str(args.repeats), "--max-gib", str(args.max_gib)]
    cmd += [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("token_chunk", "vocab_chunk") if getattr(args, k)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"path": path, "n": n, "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else []
    return names[0].strip() if names else platform.machine()


def markdown(records: list[dict], args, command: str) -> str:
    by = {(r["path"], r["n"]): r for r in records}
    lines = [SECTION, "",
             f"{datetime.date.today().isoformat()}, {cpu_model()}, "
             f"nproc {os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} threads). "
             f"V = {args.vocab}, H = {args.hidden}, float32, temperature 1; median of {args.repeats} runs "
             f"after one warm-up. Command: `{command}`", "",
             "Peak extra memory = max RSS of a fresh process minus its RSS once the inputs exist; both "
             f"paths include the (V, H) weight gradient ({args.vocab * args.hidden * 4 / 2**20:.0f} MiB).", "",
             "Times are wall-clock; CPU s is the process's CPU time (all threads), steadier on a shared machine.", "",
             "| N | path | peak extra MiB | forward s | backward s | total s | CPU s "
             "| fused / plain memory | fused / plain time | fused / plain CPU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n in args.n:
        for path in ("plain", "fused"):
            r = by[(path, n)]
            if "error" in r:
                lines.append(f"| {n} | {path} | failed: {r['error']} | | | | | | | |")
                continue
            ratio = ["", "", ""]
            p = by[("plain", n)]
            if path == "fused" and "error" not in p:
                ratio = [f"{r['peak_extra_mib'] / p['peak_extra_mib']:.3f}", f"{r['total_s'] / p['total_s']:.2f}",
                         f"{r['cpu_s'] / p['cpu_s']:.2f}"]
            lines.append(f"| {n} | {path} | {r['peak_extra_mib']:.0f} | {r['fwd_s']:.2f} | {r['bwd_s']:.2f} "
                         f"| {r['total_s']:.2f} | {r['cpu_s']:.2f} | " + " | ".join(ratio) + " |")
    lines += ["", "Max relative error, max |a - b| / max |b| over all tokens (and, for the weight gradient, "
              "all of V x H):", "",
              "| N | compared | " + " | ".join(NAMES) + " |", "|---|---|" + "---|" * len(NAMES)]
    for n in args.n:
        r = by[("plain", n)]
        if "error" in r:
            continue
        rows = [("fused vs plain (float32)", r["rel_err_fused_vs_plain"]),
                (f"plain vs float64, first {r['ref_tokens']} tokens", r["rel_err_vs_f64"]["plain"]),
                (f"fused vs float64, first {r['ref_tokens']} tokens", r["rel_err_vs_f64"]["fused"])]
        lines += [f"| {n} | {label} | " + " | ".join(f"{e:.1e}" for e in errs) + " |" for label, errs in rows]
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path = RESULTS) -> None:
    """Replace this benchmark's section of RESULTS.md (or append it), leaving other sections alone."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new.rstrip("\n") + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[256, 1024, 4096], help="token counts N")
    ap.add_argument("--vocab", type=int, default=151936, help="vocabulary size V")
    ap.add_argument("--hidden", type=int, default=1024, help="hidden size H")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    ap.add_argument("--token-chunk", type=int, default=None, help="fused tile rows (default: the library's)")
    ap.add_argument("--vocab-chunk", type=int, default=None, help="fused tile columns (default: the library's)")
    ap.add_argument("--max-gib", type=float, default=20.0, help="address-space cap per configuration (0 = none)")
    ap.add_argument("--no-write", action="store_true", help="print the table without touching RESULTS.md")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--path", choices=("plain", "fused"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.n = args.n[0]
        print(json.dumps(worker(args)))
        return
    records = []
    for n in args.n:
        for path in ("plain", "fused"):
            records.append(run_config(path, n, args))
            print(json.dumps(records[-1]), flush=True)
    command = "python bench/kl_memory.py " + " ".join(sys.argv[1:])
    text = markdown(records, args, command.strip())
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
