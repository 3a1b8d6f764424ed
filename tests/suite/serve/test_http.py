"""The server over plain HTTP: what each page answers, and every refusal a server owes its user —
no path outside the folder (``..``, absolute, a symlink out), no start without the token, no
override the schema rejects, no config that imports user code unless allowed."""

from __future__ import annotations

import html
import http.client
import json
import os
import threading
from urllib.parse import quote, urlencode, urlsplit

import pytest
from precision_suite.config import ConfigError, validate
from precision_suite.serve.launch import user_code
from precision_suite.serve.runs import inside
from precision_suite.serve.server import make_server

from tests.suite.serve.conftest import OTHER, RUNS, TOKEN


def request(url: str, path: str, method: str = "GET", body: dict | None = None, host: str | None = None):
    """(status, headers, body text) of one request sent as written (no client-side normalizing of ``..``)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    data = urlencode(body or {}) if method == "POST" else None
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if data is not None else {}
    if host:
        headers["Host"] = host
    connection.request(method, path, body=data, headers=headers)
    response = connection.getresponse()
    text = response.read().decode("utf-8", "replace")
    connection.close()
    return response.status, dict(response.getheaders()), text


def error_line(text: str) -> str:
    start = text.index('class="error"')
    return html.unescape(text[text.index(">", start) + 1 : text.index("</p>", start)])


def test_pages_answer(server_url):
    status, headers, text = request(server_url, "/")
    assert status == 200 and "default-src 'self'" in headers["Content-Security-Policy"]
    for name in [*RUNS, OTHER]:
        assert f'href="/run/{quote(name)}"' in text
    # newest first: the runs' start times, not their names, order them
    positions = [text.index(f">{name}<") for name in ["nightly/20260103-090000", "20260102-090000", OTHER]]
    assert positions == sorted(positions)
    assert request(server_url, "/run/20260101-090000")[0] == 200
    assert request(server_url, "/run/no-such-run")[0] == 404
    assert request(server_url, "/no-such-page")[0] == 404
    status, _, text = request(server_url, "/api/progress")
    assert status == 200 and json.loads(text)["runs"] == len(RUNS) + 1


def test_filters_keep_matching_runs(server_url):
    status, _, text = request(server_url, "/fragment/runs?model=cnn")
    assert status == 200 and f">{OTHER}<" in text
    assert not any(f">{name}<" in text for name in RUNS)


def test_run_page_links_its_files(server_url):
    _, _, text = request(server_url, "/run/20260101-090000")
    for file in ("results.jsonl", "report.html", "summary.csv"):
        assert f'href="/files/20260101-090000/{file}"' in text
    status, headers, _ = request(server_url, "/files/20260101-090000/results.jsonl")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")


def test_file_is_served_as_written(server_url, runs_dir):
    _, headers, body = request(server_url, "/files/20260101-090000/results.jsonl")
    assert body == (runs_dir / "20260101-090000" / "results.jsonl").read_text()
    assert "sandbox" in headers["Content-Security-Policy"]  # a served file runs no script


@pytest.mark.parametrize(
    "path",
    [
        "/files/../../etc/passwd",
        "/files/..%2F..%2Fetc%2Fpasswd",
        "/files//etc/passwd",
        "/files/%2Fetc%2Fpasswd",
        "/files/20260101-090000/../../outside.txt",
        "/run/..%2F..",
        "/files/20260101-090000",  # a folder is not a file
    ],
)
def test_no_path_outside_the_folder(server_url, runs_dir, path):
    (runs_dir.parent / "outside.txt").write_text("secret")
    status, _, text = request(server_url, path)
    assert status == 404 and "secret" not in text and "root:" not in text


def test_symlink_out_of_the_folder_is_404(server_url, runs_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    link = runs_dir / "20260101-090000" / "link.txt"
    link.symlink_to(secret)
    try:
        status, _, text = request(server_url, "/files/20260101-090000/link.txt")
        assert status == 404 and "secret" not in text
    finally:
        link.unlink()


def test_inside_follows_links(tmp_path):
    (tmp_path / "root" / "run").mkdir(parents=True)
    (tmp_path / "root" / "run" / "a.txt").write_text("a")
    (tmp_path / "root" / "in").symlink_to(tmp_path / "root" / "run")
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    (tmp_path / "secret.txt").write_text("secret")
    root = tmp_path / "root"
    assert inside(root, "run/a.txt") == (root / "run" / "a.txt").resolve()
    assert inside(root, "in/a.txt") == (root / "run" / "a.txt").resolve()  # a link that stays inside is fine
    for bad in ("out/secret.txt", "out", "../root/run/a.txt", "/etc/passwd", "run/../../x", "a\x00b"):
        assert inside(root, bad) is None, bad


def test_other_hosts_are_refused_on_loopback(server_url):
    assert request(server_url, "/", host="evil.example:80")[0] == 403
    assert request(server_url, "/", host="localhost:1")[0] == 200


def test_compare_shows_the_diff(server_url):
    old, new = "20260101-090000", "20260102-090000"
    status, _, text = request(server_url, "/compare?" + urlencode({"old": old, "new": new}))
    assert status == 200 and 'id="diff"' in text and "accuracy" in text
    status, _, text = request(server_url, "/compare?" + urlencode({"old": OTHER, "new": new}))
    assert status == 400 and "no job in common" in error_line(text)
    assert request(server_url, "/compare?" + urlencode({"old": "../x", "new": new}))[0] == 404


def test_history_has_one_point_per_run(server_url):
    status, _, text = request(server_url, "/history?row=mlp/digits/cpu/torch-amp/bf16-mixed")
    assert status == 200
    first_plot = text[text.index("<svg") : text.index("</svg>")]
    assert first_plot.count("<a ") == len(RUNS)
    for name in RUNS:
        assert f'href="/run/{quote(name)}"' in first_plot
    assert request(server_url, "/history?row=mlp/digits/cpu/torch-amp/nope")[0] == 404


# --- starting a run ---------------------------------------------------------------------------------


def test_start_needs_the_token(server_url, runs_dir):
    before = sorted(os.listdir(runs_dir))
    for form in ({"config": "smoke.yaml"}, {"config": "smoke.yaml", "token": "wrong"}):
        status, _, text = request(server_url, "/start", "POST", form)
        assert status == 403 and "token" in error_line(text)
    assert sorted(os.listdir(runs_dir)) == before  # nothing started


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ("train.epochs=ten", "train.epochs: expected an integer"),
        ("seeds=[0, x]", "seeds"),
        ("backends.names=[torch-ampp]", "torch-ampp"),
        ("data.path=/etc/passwd", "'data.path' is not allowed from the page"),
        ("models.0.kind=custom", "'models.0.kind' is not allowed"),
        ("train.epochs", "expected KEY=VALUE"),
    ],
)
def test_bad_override_is_400_with_one_line(server_url, runs_dir, overrides, expected):
    before = sorted(os.listdir(runs_dir))
    status, _, text = request(
        server_url, "/start", "POST", {"config": "smoke.yaml", "overrides": overrides, "token": TOKEN}
    )
    line = error_line(text)
    assert status == 400 and expected in line and "\n" not in line, line
    assert sorted(os.listdir(runs_dir)) == before


def test_unknown_config_is_400(server_url):
    for config in ("nope.yaml", "../configs/smoke.yaml", "/etc/passwd"):
        status, _, text = request(server_url, "/start", "POST", {"config": config, "token": TOKEN})
        assert status == 400 and "unknown config" in error_line(text)


@pytest.fixture
def user_code_server(tmp_path):
    """A server with a --configs folder holding configs that import user code."""
    configs = tmp_path / "mine"
    configs.mkdir()
    (configs / "custom.yaml").write_text("models:\n  - kind: custom\n    torch: mypkg.models:build\n")
    (configs / "loader.yaml").write_text("data:\n  name: python\n  loader: mypkg.data:load\n")
    (tmp_path / "runs").mkdir()
    servers = []

    def start(allow: bool) -> str:
        server = make_server(tmp_path / "runs", "127.0.0.1", 0, [configs], allow_user_code=allow, token=TOKEN)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
        server.app.launcher.stop()


def test_user_code_config_is_refused(user_code_server):
    url = user_code_server(allow=False)
    _, _, page = request(url, "/start")
    assert "mine/custom.yaml" in page  # listed: the --configs folder's configs
    for config, key in (("mine/custom.yaml", "models.0.kind: custom"), ("mine/loader.yaml", "data.name: python")):
        status, _, text = request(url, "/start", "POST", {"config": config, "token": TOKEN})
        assert status == 403 and key in error_line(text) and "--allow-user-code" in error_line(text)


def test_user_code_allowed_goes_on_to_the_schema(user_code_server):
    """With the flag, the config is no longer refused for its user code: the schema judges it,
    as it judges the same config read directly (a 400 naming the key, or a start)."""
    url = user_code_server(allow=True)
    status, _, text = request(url, "/start", "POST", {"config": "mine/loader.yaml", "token": TOKEN})
    assert "--allow-user-code" not in text
    try:
        validate({"data": {"name": "python", "loader": "mypkg.data:load"}}, "loader.yaml")
    except ConfigError:
        assert status == 400 and "data.name" in error_line(text)
    else:
        assert status == 303


def test_user_code_is_found_by_its_keys():
    assert user_code({"models": [{"kind": "mlp"}, {"kind": "custom"}]}) == ["models.1.kind: custom"]
    assert user_code({"models": {"kind": "custom"}, "data": {"name": "python"}}) == [
        "models.0.kind: custom",
        "data.name: python",
    ]
    assert user_code({"models": [{"kind": "mlp"}], "data": {"name": "digits"}}) == []


def test_one_run_at_a_time(tmp_path):
    (tmp_path / "runs").mkdir()
    server = make_server(tmp_path / "runs", "127.0.0.1", 0, token=TOKEN)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        status, headers, _ = request(url, "/start", "POST", {"config": "smoke.yaml", "token": TOKEN})
        assert status == 303 and headers["Location"].startswith("/run/")
        name = headers["Location"].removeprefix("/run/")
        started = tmp_path / "runs" / name
        assert json.loads((started / "serve.json").read_text())["config"] == "smoke.yaml"
        # its page and its row exist before its first record (the page follows it from there)
        assert request(url, headers["Location"])[0] == 200
        assert f">{name}<" in request(url, "/")[2]
        status, _, text = request(url, "/start", "POST", {"config": "smoke.yaml", "token": TOKEN})
        assert status == 409 and name in error_line(text)
        assert json.loads(request(url, "/api/progress")[2])["active"]["running"]
    finally:
        server.shutdown()
        server.server_close()
        server.app.launcher.stop()
    assert server.app.launcher.active.exit_code is not None  # stopped with the server


NO_FRAMEWORK = """
import json, sys, threading, urllib.request, urllib.error
from precision_suite.serve.server import make_server
server = make_server(sys.argv[1], "127.0.0.1", 0, token="t")
threading.Thread(target=server.serve_forever, daemon=True).start()
base = f"http://127.0.0.1:{server.server_address[1]}"
for path in sys.argv[2:]:
    urllib.request.urlopen(base + path, timeout=60).read()
data = b"config=smoke.yaml&overrides=train.epochs%3Dten&token=t"
try:
    urllib.request.urlopen(base + "/start", data=data, timeout=60)
except urllib.error.HTTPError as exc:
    assert exc.code == 400, exc.code
server.shutdown()
print(json.dumps(sorted(m for m in ("torch", "tensorflow", "keras", "jax", "ray") if m in sys.modules)))
"""


def test_the_server_imports_no_framework(runs_dir):
    """Every page, and validating a config to start, in a fresh interpreter: no framework imported."""
    import subprocess
    import sys

    pages = ["/", "/run/20260101-090000", "/run/20260102-090000", "/compare?old=20260101-090000&new=20260102-090000"]
    pages += ["/history", "/history?row=mlp/digits/cpu/torch-amp/bf16-mixed", "/start", "/api/progress"]
    out = subprocess.run(
        [sys.executable, "-c", NO_FRAMEWORK, str(runs_dir), *pages], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_cli_serve_refuses_a_missing_folder(tmp_path):
    from precision_suite.cli import main

    assert main(["serve", str(tmp_path / "nope"), "--port", "0"]) == 2


def test_other_hosts_warn():
    from precision_suite.serve.server import host_warning

    assert host_warning("127.0.0.1") is None and host_warning("localhost") is None and host_warning("::1") is None
    assert "0.0.0.0" in host_warning("0.0.0.0")


def test_history_splits_machines_and_changed_configs(tmp_path):
    """Two machines are two series; so is the same row name training another model."""
    from datetime import datetime

    from precision_suite.outputs.rundir import load_run
    from precision_suite.serve.history import history, plot_history
    from precision_suite.serve.runs import summarize

    from tests.suite.serve.conftest import fixture_records, write_run

    wider = fixture_records("alpha", 0.0)
    for record in wider:
        record["config"]["model"]["hidden"] = [256]
    specs = [
        ("a", "alpha", fixture_records("alpha", 0.0)),
        ("b", "beta", fixture_records("beta", 0.0)),
        ("c", "", wider),
    ]
    loaded = []
    for day, (name, _, records) in enumerate(specs, start=1):
        write_run(tmp_path, name, records, datetime(2026, 1, day))
        loaded.append((summarize(name, load_run(tmp_path / name)), load_run(tmp_path / name)))
    key = ("mlp", "digits", "cpu", "torch-amp", "bf16-mixed")
    points = history(loaded, key)
    assert [p.run for p in points] == ["a", "b", "c"]
    assert points[0].machine != points[1].machine and points[0].machine == points[2].machine
    assert points[0].trained != points[2].trained
    svg = plot_history(points, key)[0].svg
    assert svg.count("<a ") == 3 and svg.count(" · config ") == 3  # three series in the legend
