"""The run's status line as HTML: state badge, progress, source, last events, and a crash box.

Design choices:
- The dashboard passes plain values (status string, step counts, events, error text); this module
  decides only how they look, so the same card serves a live run and a replay.
- Statuses are the engine's (`sdpg.run.STATUSES`, one spelling each); a replay's comes from
  `sdpg.run.replay_status`, so a crashed run reads "crashed" with its message after its process is gone.
- A crash shows the message first and the traceback tail in a scrollable box under it.
- A race gets a card of its own (`race_card_html`): "RACE · GRPO vs SDPG · step k / n" with the race's status
  badge, where k is the step both runs have reached, and each run's status and step under it.
- Health events (`sdpg.health`) get their own banner, one line per finding, red for errors and amber for
  warnings, so a run that "finished" without learning does not look like a success.
"""
from __future__ import annotations

import html
import time
from pathlib import Path

from sdpg.health import health_events
from sdpg.run import STATUSES

STATUS_COLORS = {
    "idle": "#868e96", "created": "#868e96", "loading": "#f08c2e", "running": "#2b8a3e", "paused": "#e67700",
    "stopping": "#e67700", "stopped": "#495057", "finished": "#1864ab", "crashed": "#c92a2a",
    "incomplete": "#e67700",
}
"""one colour per status of `sdpg.run.STATUSES`, and no other spelling"""


def _event_text(e: dict) -> str:
    """"12:03:04 checkpoint · step 50 → step_000050": paths shortened to their last part."""
    stamp = time.strftime("%H:%M:%S", time.localtime(e["wall"])) if isinstance(e.get("wall"), (int, float)) else ""
    text = f"{stamp} {e.get('event', '?')}"
    if "step" in e:
        text += f" · step {e['step']}"
    where = e.get("path") or e.get("checkpoint")
    return text + (f" → {Path(str(where)).name}" if where else "")


def status_html(status: str, *, step: int = 0, total: int | None = None, source: str = "", run_dir: str = "",
                error: str | None = None, events: list[dict] | None = None, note: str = "") -> str:
    """A status card: coloured state badge, step progress bar, where the records come from, recent events."""
    if status not in STATUS_COLORS:
        raise ValueError(f"status {status!r} is not a run status (one of {', '.join(STATUSES)})")
    color = STATUS_COLORS[status]
    share = min(1.0, step / total) if total else 0.0
    progress = (f"<div style='flex:1;min-width:160px;height:8px;background:#e9ecef;border-radius:4px;overflow:hidden'>"
                f"<div style='width:{share:.1%};height:100%;background:{color}'></div></div>"
                f"<span style='font-variant-numeric:tabular-nums'>step {step}" + (f" / {total}" if total else "")
                + "</span>")
    recent = " &nbsp;│&nbsp; ".join(html.escape(_event_text(e)) for e in (events or [])[-3:])
    parts = [
        "<div style='display:flex;align-items:center;gap:14px;flex-wrap:wrap'>",
        f"<span class='sdpg-status' data-status='{html.escape(status)}' style='padding:3px 12px;border-radius:999px;"
        f"background:{color};color:#fff;font-weight:700;letter-spacing:.03em'>{html.escape(status.upper())}</span>",
        progress,
        f"<span style='color:#495057'>{html.escape(source)}</span>" if source else "",
        f"<code style='color:#868e96'>{html.escape(run_dir)}</code>" if run_dir else "",
        "</div>",
        f"<div style='color:#868e96;font-size:12px;margin-top:6px'>{html.escape(note)}</div>" if note else "",
        f"<div style='color:#868e96;font-size:12px;margin-top:6px'>{recent}</div>" if recent else "",
    ]
    if error:
        head, _, tail = error.partition("\n")
        parts.append(
            "<div class='sdpg-error' style='margin-top:8px;border:1px solid #ffc9c9;background:#fff5f5;border-radius:8px;"
            f"padding:8px 12px;color:#c92a2a'><b>The training thread crashed:</b> {html.escape(head)}"
            + (f"<pre style='max-height:180px;overflow:auto;font-size:12px;color:#862e2e;margin:6px 0 0'>"
               f"{html.escape(tail.strip())}</pre>" if tail.strip() else "")
            + "<div style='color:#495057;margin-top:4px'>Records up to the crash stay browsable below.</div></div>")
    return "<div style='padding:10px 14px;border:1px solid #e9ecef;border-radius:10px;background:#fff'>" + "".join(parts) + "</div>"


def race_card_html(status: str, runs: list[dict], *, race_dir: str = "") -> str:
    """A race's status card. `status` is the race's (`sdpg.race.race_status`); `runs` one dict per run with
    `method`, `status`, `step`, `total` and `error` (None unless it crashed)."""
    if status not in STATUS_COLORS:
        raise ValueError(f"status {status!r} is not a run status (one of {', '.join(STATUSES)})")
    color = STATUS_COLORS[status]
    step, total = min(r["step"] for r in runs), max(r["total"] or 0 for r in runs)
    share = min(1.0, step / total) if total else 0.0
    title = f"RACE · {' vs '.join(r['method'].upper() for r in runs)} · step {step}" + (f" / {total}" if total else "")
    each = " &nbsp;│&nbsp; ".join(
        f"<span class='sdpg-race-run' data-status='{html.escape(r['status'])}'><b>{html.escape(r['method'].upper())}</b> "
        f"<span style='color:{STATUS_COLORS.get(r['status'], '#495057')}'>{html.escape(r['status'])}</span> at step "
        f"{r['step']}" + (f" / {r['total']}" if r["total"] else "") + "</span>" for r in runs)
    errors = "".join(
        "<div class='sdpg-error' style='margin-top:8px;border:1px solid #ffc9c9;background:#fff5f5;border-radius:8px;"
        f"padding:8px 12px;color:#c92a2a'><b>The {html.escape(r['method'].upper())} run crashed:</b> "
        f"{html.escape(r['error'].splitlines()[0])}</div>" for r in runs if r.get("error"))
    return (f"<div class='sdpg-race-card' data-status='{html.escape(status)}' style='padding:10px 14px;"
            "border:1px solid #e9ecef;border-radius:10px;background:#fff'>"
            "<div style='display:flex;align-items:center;gap:14px;flex-wrap:wrap'>"
            f"<span class='sdpg-race-badge' style='padding:3px 12px;border-radius:999px;background:{color};color:#fff;"
            f"font-weight:700;letter-spacing:.03em'>{html.escape(status.upper())}</span>"
            f"<b class='sdpg-race-title'>{html.escape(title)}</b>"
            f"<div style='flex:1;min-width:160px;height:8px;background:#e9ecef;border-radius:4px;overflow:hidden'>"
            f"<div style='width:{share:.1%};height:100%;background:{color}'></div></div>"
            + (f"<code style='color:#868e96'>{html.escape(race_dir)}</code>" if race_dir else "")
            + f"</div><div style='color:#495057;font-size:13px;margin-top:6px'>{each}</div>{errors}</div>")


def message_html(text: str, kind: str = "info") -> str:
    """Feedback on the last button press; `kind` is "info", "ok" or "error"."""
    if not text:
        return ""
    colors = {"info": ("#e7f5ff", "#1864ab"), "ok": ("#ebfbee", "#2b8a3e"), "error": ("#fff5f5", "#c92a2a")}
    bg, fg = colors.get(kind, colors["info"])
    return (f"<div class='sdpg-message sdpg-{kind}' style='background:{bg};color:{fg};border-radius:8px;padding:8px 12px;"
            f"white-space:pre-wrap'>{html.escape(text)}</div>")


HEALTH_COLORS = {"error": ("#fff5f5", "#c92a2a", "#ffc9c9"), "warning": ("#fff9db", "#8f5b00", "#ffe066")}


def health_banner(events: list[dict]) -> str:
    """A banner listing a run's health findings ("" when there are none), the worst colour winning."""
    found = health_events(events)
    if not found:
        return ""
    worst = "error" if any(e.get("severity") == "error" for e in found) else "warning"
    bg, fg, border = HEALTH_COLORS[worst]
    items = "".join(
        f"<li data-check='{html.escape(str(e.get('check')))}'><b>{html.escape(str(e.get('severity', 'warning')))}"
        f"</b> at step {html.escape(str(e.get('step')))}: {html.escape(str(e.get('message')))}</li>" for e in found)
    return (f"<div class='sdpg-health sdpg-health-{worst}' style='margin-top:8px;border:1px solid {border};"
            f"background:{bg};color:{fg};border-radius:8px;padding:8px 12px'><b>Run health:</b>"
            f"<ul style='margin:4px 0 0 18px;padding:0'>{items}</ul></div>")
