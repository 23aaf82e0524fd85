"""The page under hostile or clumsy use: every endpoint's path inputs confined, replays of valid-but-wrong
records, byte budgets per refresh, and many viewers served from one snapshot per tick.

Each test reproduces a failure seen on the served page, driven through `gradio_client` like a browser would.
"""
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
"""the python types gradio_client reports for inputs that take free text (textboxes, custom-value dropdowns)"""


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
            if p["python_type"]["type"] not in PATH_TYPES:
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
