"""The page under hostile or clumsy use: every endpoint's path inputs confined, replays of valid-but-wrong
records, byte budgets per refresh, and many viewers served from one snapshot per tick.

Each test reproduces a failure seen on the served page, driven through `gradio_client` like a browser would.
"""
import html
import json
import os
from pathlib import Path

import pytest
from gradio_client import Client

import app as dashboard
from fixtures.records import write_run
from fixtures.waiting import free_port

SECRET = "private-data-SECRET-7731.jsonl"
"""a setting of the run outside the roots: the page must never show it"""
PATH_TYPES = ("str", "Literal[]", "list[Literal[]]")
"""the python types gradio_client reports for inputs that take free text (textboxes, custom-value dropdowns without
choices); a multiselect with choices (`list[Literal['a', ...]]`, the Compare picker) is tried too"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The dashboard over a fresh runs root whose run factory only counts starts; yields (ctl, client, starts)."""
    runs_root = tmp_path_factory.mktemp("page-runs")
    starts = []
    ctl = dashboard.Controller(runs_root, run_factory=lambda cfg: starts.append(cfg) or pytest.fail("started"))
    demo = dashboard.build_app(ctl)
    _, url, _ = dashboard.serve(demo, port=free_port(), block=False)
    yield ctl, Client(url, verbose=False), starts
    demo.close()


def outside_run(tmp_path: Path) -> Path:
    run = write_run(tmp_path / "elsewhere" / "outside-run", steps=2)
    config = json.loads((run / "config.json").read_text())
    config["data"]["train"] = f"/home/someone/{SECRET}"
    (run / "config.json").write_text(json.dumps(config))
    return run


def call(client: Client, endpoint: str, args: list) -> str:
    """What the page answers, as text (an error is an answer too)."""
    try:
        return json.dumps(client.predict(*args, api_name=endpoint), default=str)
    except Exception as err:  # noqa: BLE001 - the page's error message is what a user sees
        return f"error: {err}"


def test_every_endpoint_confines_every_path_input_with_one_answer_for_existing_and_missing(page, tmp_path):
    ctl, client, starts = page
    run = outside_run(tmp_path)
    link_in, dangling_in = ctl.runs_root / "link-out", ctl.runs_root / "link-missing"
    os.symlink(run, link_in)
    os.symlink(tmp_path / "elsewhere" / "no-such-run", dangling_in)
    rel_up = os.path.relpath(run, ctl.runs_root.resolve())
    pairs = [(str(run), str(tmp_path / "elsewhere" / "no-such-run")),                       # absolute
             (str(ctl.runs_root / rel_up), str(ctl.runs_root / rel_up) + "-missing"),       # .. out of the root
             (str(link_in), str(dangling_in))]                                               # symlinks out
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    tried = set()
    for name, spec in endpoints.items():
        params = spec["parameters"]
        defaults = [p.get("parameter_default") for p in params]
        for i, p in enumerate(params):
            kind = p["python_type"]["type"]
            if kind not in PATH_TYPES and not kind.startswith("list[Literal["):  # multiselects take custom values
                continue
            tried.add(name)
            for existing, missing in pairs:
                answers = []
                for path in (existing, missing):
                    args = list(defaults)
                    args[i] = [path] if p["python_type"]["type"].startswith("list") else path
                    answers.append(call(client, name, args).replace(path, "PATH"))
                assert SECRET not in answers[0], f"{name} input {p['label']!r} showed the outside run: {answers[0][:300]}"
                assert answers[0] == answers[1], (f"{name} input {p['label']!r} tells {existing} from {missing}:\n"
                                                  f"{answers[0][:300]}\n{answers[1][:300]}")
                assert ctl.replay is None and not starts
    assert {"/compare", "/open_replay", "/start"} <= tried
    message = call(client, "/compare", [[str(run)]])
    assert "outside the folders this page may use" in message and "Comparing 0 runs" in message


# ---------------- item 3: valid-but-wrong JSON in a replay ----------------
def refresh(client: Client) -> list:
    return client.predict(None, None, True, "kl", 0, 0, 0, api_name="/refresh")


def damage_config(run: Path, how: str) -> str:
    """Break `run` the way `how` names; returns what the page must say about it."""
    config = json.loads((run / "config.json").read_text())
    if how == "config is a list":
        (run / "config.json").write_text("[1, 2]")
        return "not a config (expected a JSON object of sections, got list)"
    if how == "run.steps is text":
        config["run"]["steps"] = "abc"
        (run / "config.json").write_text(json.dumps(config))
        return "run.steps is 'abc', not a number"
    lines = (run / "metrics.jsonl").read_text().splitlines(True)
    row = json.loads(lines[1])
    row["reward/mean"] = "high"
    lines[1] = json.dumps(row) + "\n"
    (run / "metrics.jsonl").write_text("".join(lines))
    return "line 2: reward/mean is str 'high', not a number"


@pytest.mark.parametrize("how", ["config is a list", "run.steps is text", "a metric is text"])
def test_a_replay_with_valid_but_wrong_json_opens_and_says_what_it_left_out(page, how):
    ctl, client, _ = page
    run = write_run(ctl.runs_root / how.replace(" ", "-").replace(".", "_"), steps=4)
    needle = damage_config(run, how)
    message = client.predict(str(run), api_name="/open_replay")
    assert "Opened" in message
    viewers = [client, Client(client.src, verbose=False)]
    for viewer in viewers:
        answer = refresh(viewer)  # on the old page: an error with no message, for every viewer, every tick
        assert needle in html.unescape(answer[0]), answer[0][:500]
        assert "plot" in answer[1]  # the curves are drawn
    if how == "a metric is text":
        assert [m["step"] for m in ctl.replay.metrics()] == [1, 3, 4]
    client.predict(api_name="/show_live")


# ---------------- item 5: size limits and byte budgets ----------------
def test_a_record_file_over_the_limit_is_refused_by_replay_and_compare_naming_it(page, monkeypatch):
    ctl, client, _ = page
    run = write_run(ctl.runs_root / "huge", steps=3)
    monkeypatch.setattr(dashboard, "MAX_RECORD_BYTES", 2**20)
    with open(run / "metrics.jsonl", "a") as f:
        row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        for step in range(4, 4 + 2**20 // len(json.dumps(row)) + 10):
            f.write(json.dumps({**row, "step": step}) + "\n")
    message = client.predict(str(run), api_name="/open_replay")
    assert f"{run / 'metrics.jsonl'} is 1 MiB" in message or f"{run / 'metrics.jsonl'} is 2 MiB" in message, message
    assert "at most 1 MiB" in message and ctl.replay is None
    note = client.predict([str(run)], api_name="/compare")[0]
    assert "Comparing 0 runs" in note and "at most 1 MiB" in note


def test_a_long_run_is_sent_within_a_byte_budget_per_refresh(page):
    ctl, client, _ = page
    run = write_run(ctl.runs_root / "long", steps=2)
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[1])
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, 20_001):
            f.write(json.dumps({**first, "step": step, "reward/mean": (step % 97) / 97}) + "\n")
    assert "Opened" in client.predict(str(run), api_name="/open_replay")
    answer = refresh(Client(client.src, verbose=False))
    size = len(json.dumps(answer, default=str))
    assert size < 4 * 2**20, f"one refresh sent {size / 2**20:.1f} MiB"
    curves = json.loads(answer[1]["plot"])
    lengths = [len(trace["x"]) for trace in curves["data"]]
    assert max(lengths) <= 2100 and all(t["x"][-1] == 20_000 for t in curves["data"] if t["x"] and "planned" not in t["name"])
    client.predict(api_name="/show_live")


# ---------------- many viewers: one shared snapshot per change ----------------
def test_many_viewers_of_one_change_share_one_build(page, monkeypatch):
    ctl, client, _ = page
    run = write_run(ctl.runs_root / "shared", steps=3)
    assert "Opened" in client.predict(str(run), api_name="/open_replay")
    builds = []
    real = dashboard.curves_figure
    monkeypatch.setattr(dashboard, "curves_figure", lambda *a, **k: builds.append(1) or real(*a, **k))
    viewers = [Client(client.src, verbose=False) for _ in range(8)]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(refresh, viewers))
    assert len(builds) == 1, f"{len(builds)} builds of the curves for 8 viewers of one version"
    assert len({json.dumps(a[1], default=str) for a in answers}) == 1
    client.predict(api_name="/show_live")
