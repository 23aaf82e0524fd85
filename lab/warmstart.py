"""The embedded warm start as the first phase of a run: progress bar with ETA and its curve, from `warmstart` events.

Design choices:
- Input is the run's events (`sdpg.run.warmstart_recorder`): progress dicts with step, steps, loss,
  elapsed seconds, and on some steps the skill check (greedy pass rate on unseen problems) with its target;
  or one `cached` event. A cached start is one line; a live one a bar and a small inline SVG chart, so the
  status card needs no extra plot component.
- The ETA assumes the remaining steps run at the average pace so far; the warm start may stop earlier,
  when the skill check reaches its target, so it is an upper bound (the card says so).
- Once the warm start is over (its last event is its last step, or a skill check that reached the target), the
  card collapses into one "done" line: the run trains by then, and a stale bar with an ETA would say otherwise.
"""
from __future__ import annotations

import html
import math

from lab.style import COLORS

WIDTH, HEIGHT = 360, 90


def warmstart_html(events: list[dict]) -> str:
    """"" when the run had no embedded warm start; else a one-line note (cached, or done) or the live progress card."""
    ws = [e for e in events if e.get("event") == "warmstart"]
    if not ws:
        return ""
    last = ws[-1]
    if last.get("cached"):
        return (f"<div class='sdpg-warmstart' style='color:#495057;font-size:12px;margin-top:4px'>Embedded model: cached "
                f"warm start ({last.get('steps')} steps, student pass@1 {_num(last.get('student_pass@1'))}, teacher "
                f"{_num(last.get('teacher_pass@1'))}) — no warm-up needed.</div>")
    if finished(last):
        return _done_line(last)
    step, steps, elapsed = last["step"], last["steps"], last.get("elapsed_s", 0.0)
    eta = elapsed / step * (steps - step) if step else 0.0
    checks = [e for e in ws if "check" in e]
    check = (f" · skill check {checks[-1]['check']:.2f} (target {checks[-1]['target']:.2f})" if checks else "")
    bar = (f"<div style='height:8px;background:#e9ecef;border-radius:4px;overflow:hidden;margin:4px 0'>"
           f"<div style='width:{step / steps:.1%};height:100%;background:{COLORS['teacher']}'></div></div>")
    return (f"<div class='sdpg-warmstart' style='margin-top:8px;padding:8px 12px;border:1px solid #ffe8cc;"
            f"border-radius:8px;background:#fff9f2;font-size:13px'><b>Warm start of the embedded model</b> (runs once, "
            f"then cached): step {step} / {steps} · loss {last['loss']:.3f}{check} · {elapsed:.0f} s elapsed · "
            f"ETA ≤ {_duration(eta)} (it stops early at the target){bar}{_svg(ws, steps)}</div>")


def finished(event: dict) -> bool:
    """Whether a warm-start progress event is its last: the last planned step, or a skill check at the target."""
    return event["step"] >= event["steps"] or event.get("check", -1.0) >= event.get("target", math.inf)


def _done_line(last: dict) -> str:
    """"Warm start done: 480 of 600 steps (skill check 0.91 reached its target 0.90) in 3.2 min · loss 0.041"."""
    steps = (f"{last['step']} of {last['steps']} steps (skill check {last['check']:.2f} reached its target "
             f"{last['target']:.2f})" if last["step"] < last["steps"] else f"{last['steps']} steps")
    return (f"<div class='sdpg-warmstart sdpg-warmstart-done' style='color:#495057;font-size:12px;margin-top:4px'>"
            f"Embedded model: warm start done — {steps} in {_duration(last.get('elapsed_s', 0.0))} · loss "
            f"{last['loss']:.3f}; cached for later runs.</div>")


def _svg(ws: list[dict], steps: int) -> str:
    """Loss (left scale, orange line) and skill checks (0..1, green dots with the dashed target line)."""
    losses = [(e["step"], e["loss"]) for e in ws if "loss" in e]
    top = max(v for _, v in losses) or 1.0
    x = lambda s: 4 + (WIDTH - 8) * s / max(1, steps)  # noqa: E731
    path = " ".join(f"{x(s):.1f},{HEIGHT - 4 - (HEIGHT - 8) * v / top:.1f}" for s, v in losses)
    dots = "".join(f"<circle cx='{x(e['step']):.1f}' cy='{HEIGHT - 4 - (HEIGHT - 8) * e['check']:.1f}' r='3' "
                   f"fill='{COLORS['reward']}'><title>check {e['check']:.2f} at step {e['step']}</title></circle>"
                   for e in ws if "check" in e)
    target = next((e["target"] for e in ws if "target" in e), None)
    line = (f"<line x1='4' x2='{WIDTH - 4}' y1='{HEIGHT - 4 - (HEIGHT - 8) * target:.1f}' "
            f"y2='{HEIGHT - 4 - (HEIGHT - 8) * target:.1f}' stroke='{COLORS['reward']}' stroke-dasharray='4 3'/>"
            if target is not None else "")
    return (f"<svg width='{WIDTH}' height='{HEIGHT}' style='background:#fff;border-radius:4px' "
            f"aria-label='warm-start loss and skill checks'><polyline points='{html.escape(path)}' fill='none' "
            f"stroke='{COLORS['teacher']}' stroke-width='2'/>{line}{dots}</svg>"
            f"<div style='font-size:11px;color:#868e96'>orange: training loss · green: skill checks vs target (dashed)</div>")


def _num(x) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else "?"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
