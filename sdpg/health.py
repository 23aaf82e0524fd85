"""Health checks: a run that has stopped learning says so, in a `health` event, instead of ending "finished".

Design choices:
- One small engine fed the metrics rows the run emits (`observe(row)`), plus `finish()` at the end of the
  run; each returns `HealthEvent`s that the run writes as `records.emit_event("health", ...)`. The CLI,
  the page and the notebook only read those events.
- Each check fires at most once per run (per severity): a warning that repeats every step would bury the
  curves it is about. A resumed run is primed from its history, so it does not repeat a warning either.
- Thresholds are far outside what healthy runs show. Measured on the embedded task (27 runs x 100
  steps, docs/compare.json): entropy 0.076-0.194 nats/token, gradient norm never below 0.128, teacher
  pass@1 0.93-0.96. The collapses this catches: lr 1e3 (gradient norm exactly 0 for 29 steps, pass@1
  0.31 -> 0), beta = inf (8 of 8 steps skipped), plain RL eroding the hinted pass rate 0.89 -> 0.28.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

GRAD_ZERO_NORM = 1e-5
"""a gradient norm at or below this counts as zero (float32 leaves ~1e-7 where the exact value is 0)"""
GRAD_ZERO_STREAK = 5
"""consecutive applied steps with a zero gradient before `grad_norm_zero` fires"""
ENTROPY_FLOOR = 0.01
"""student entropy (nats per response token) below which the policy counts as collapsed"""
ENTROPY_STREAK = 3
"""consecutive steps below ENTROPY_FLOOR before `entropy_collapse` fires"""
SKIP_WARN_STEPS = 3
"""`all_steps_skipped` warns once the first this-many steps of a longer run were all skipped (an error at the end)"""
TEACHER_DROP_ABS = 0.2
"""teacher pass@1 must fall this far (absolute) below its first evaluation to count as eroding ..."""
TEACHER_DROP_REL = 0.25
"""... and by this fraction of that first value"""

CHECKS = ("all_steps_skipped", "grad_norm_zero", "entropy_collapse", "pass_at_1_zero", "teacher_erosion")


def health_events(events: list[dict]) -> list[dict]:
    """The `health` events among a run's events, oldest first."""
    return [e for e in events if e.get("event") == "health"]


@dataclass(frozen=True)
class HealthEvent:
    """One finding, in the fields of the `health` event."""

    step: int
    """training step the finding refers to"""
    check: str
    """one of CHECKS"""
    message: str
    """one sentence for a person: what was seen and what it means"""
    severity: str
    """"warning" (the run goes on) or "error" (the run has failed at its job)"""

    def fields(self) -> dict:
        return asdict(self)


@dataclass
class HealthMonitor:
    """Watches a run's metrics rows; see the module docstring for the checks and their thresholds."""

    total_steps: int = 0
    """the run's planned training steps (0: unknown)"""
    steps: int = 0
    skipped: int = 0
    grad_zero_streak: int = 0
    low_entropy_streak: int = 0
    best_pass: float = 0.0
    best_pass_step: int = 0
    first_teacher: float | None = None
    fired: set = field(default_factory=set)

    @classmethod
    def primed(cls, rows: list[dict], events: list[dict], total_steps: int = 0) -> "HealthMonitor":
        """A monitor that has seen a resumed run's history and the health events it already emitted."""
        monitor = cls(total_steps=total_steps)
        for row in rows:
            monitor.observe(row)
        monitor.fired = {(e.get("check"), e.get("severity")) for e in events if e.get("event") == "health"}
        return monitor

    def observe(self, row: dict) -> list[HealthEvent]:
        """Findings from one metrics row (step 0 holds only the first evaluation)."""
        step, found = int(row["step"]), []
        if "step/skipped" in row:
            found += self._training_step(step, row)
        found += self._evaluation(step, row)
        return [e for e in found if self._first_time(e)]

    def finish(self) -> list[HealthEvent]:
        """Findings about the run as a whole, once it has ended."""
        if self.steps and self.skipped == self.steps:
            return [e for e in [HealthEvent(self.steps, "all_steps_skipped", (
                f"all {self.steps} training steps were skipped (non-finite loss or gradient): the model never "
                "changed; see the step_skipped events for the reason"), "error")] if self._first_time(e)]
        return []

    def _training_step(self, step: int, row: dict) -> list[HealthEvent]:
        found = []
        self.steps += 1
        skipped = bool(row.get("step/skipped"))
        self.skipped += skipped
        if self.skipped == self.steps == SKIP_WARN_STEPS and step != self.total_steps:  # the end says it anyway
            found.append(HealthEvent(step, "all_steps_skipped", (
                f"the first {self.steps} training steps were all skipped (non-finite loss or gradient): "
                "nothing is being learned"), "warning"))
        grad = row.get("grad/norm")
        zero_grad = not skipped and grad is not None and abs(grad) <= GRAD_ZERO_NORM
        self.grad_zero_streak = self.grad_zero_streak + 1 if zero_grad else 0
        if self.grad_zero_streak == GRAD_ZERO_STREAK:
            found.append(HealthEvent(step, "grad_norm_zero", (
                f"the gradient norm was 0 for {GRAD_ZERO_STREAK} steps in a row: no group has a reward spread "
                "or a gated token to learn from, so the weights no longer move"), "warning"))
        entropy = row.get("entropy/mean")
        self.low_entropy_streak = self.low_entropy_streak + 1 if entropy is not None and entropy < ENTROPY_FLOOR else 0
        if self.low_entropy_streak == ENTROPY_STREAK:
            found.append(HealthEvent(step, "entropy_collapse", (
                f"the student's entropy stayed below {ENTROPY_FLOOR} nats per token for {ENTROPY_STREAK} steps "
                f"(now {entropy:.2g}): it samples one answer per prompt and has stopped exploring"), "warning"))
        return found

    def _evaluation(self, step: int, row: dict) -> list[HealthEvent]:
        found = []
        passed, teacher = row.get("eval/pass@1"), row.get("eval/teacher_pass@1")
        if passed is not None:
            if passed == 0 and self.best_pass > 0:
                found.append(HealthEvent(step, "pass_at_1_zero", (
                    f"held-out pass@1 fell to 0 (it was {self.best_pass:.3f} at step {self.best_pass_step}): "
                    "the model no longer solves any held-out problem"), "error"))
            if passed > self.best_pass:
                self.best_pass, self.best_pass_step = passed, step
        if teacher is not None:
            if self.first_teacher is None:
                self.first_teacher = teacher
            elif min(self.first_teacher - TEACHER_DROP_ABS, (1 - TEACHER_DROP_REL) * self.first_teacher) >= teacher:
                found.append(HealthEvent(step, "teacher_erosion", (
                    f"the teacher's pass@1 with the privileged context fell from {self.first_teacher:.3f} to "
                    f"{teacher:.3f}: the model is losing the use of the hint, and in self-distillation the "
                    "teacher is that model"), "warning"))
        return found

    def _first_time(self, event: HealthEvent) -> bool:
        key = (event.check, event.severity)
        if key in self.fired:
            return False
        self.fired.add(key)
        return True
