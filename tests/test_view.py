"""``physfm view``: run discovery, the file route's refusals, and the page itself in headless
Chromium (run list, frame slider, α slider with its readout, a screenshot)."""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from physfm.view.app import create_app
from physfm.view.layout import link_figures
from physfm.view.runs import discover_runs, resolve_recorded, safe_file
from tests.view_fixtures import BROKEN, DEFAULT_METHOD, build_view_runs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_view_runs(tmp_path_factory.mktemp("view") / "runs")["root"]


def test_discover_runs_names_each_kind_and_keeps_a_broken_run_as_an_error(runs):
    found = {r.rel: r for r in discover_runs(runs)}
    kinds = {rel: r.kind for rel, r in found.items()}
    assert kinds == {
        "evaluate": "evaluate",
        "export": "export",
        "tokenizer-eval": "tokenizer-eval",
        "steer/probe": "probe",
        BROKEN: "run",
    }
    assert "metrics.json" in found[BROKEN].error and not found["evaluate"].error
    assert dict(found["steer/probe"].headline)["target"] == "nu"
    assert found["evaluate"].report.startswith("# Evaluation")


def test_recorded_paths_resolve_from_the_runs_ancestors(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "quickstart" / "evaluate"
    run.mkdir(parents=True)
    (tmp_path / "runs" / "quickstart" / "shards").mkdir()
    # the viewer runs from another tree that has its own runs/quickstart (e.g. a checkout where
    # `make quickstart` ran): the run's own tree wins; the working directory is the fallback
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "runs" / "quickstart" / "shards").mkdir(parents=True)
    (elsewhere / "runs" / "quickstart" / "tokens").mkdir()
    monkeypatch.chdir(elsewhere)
    assert (
        resolve_recorded("runs/quickstart/shards", run, tmp_path / "runs")
        == tmp_path / "runs/quickstart/shards"
    )
    assert (
        resolve_recorded("runs/quickstart/tokens", run, tmp_path / "runs")
        == elsewhere / "runs/quickstart/tokens"
    )
    assert resolve_recorded("runs/quickstart/nope", run, tmp_path / "runs") is None


def test_report_figures_link_to_the_file_route():
    text = "![a](vrmse.png) and [b](sub/x.png) but ![c](http://x/y.png) and [d](#top)"
    assert link_figures(text, "qs/evaluate") == (
        "![a](/files/qs/evaluate/vrmse.png) and [b](/files/qs/evaluate/sub/x.png) but ![c](http://x/y.png) and [d](#top)"
    )


def test_file_route_serves_only_files_under_the_root(runs, tmp_path, caplog):
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    (runs / "evaluate" / "leak").symlink_to(outside)
    client = create_app(runs).server.test_client()
    ok = client.get("/files/evaluate/vrmse_vs_horizon.png")
    assert ok.status_code == 200 and ok.data[:4] == b"\x89PNG"
    with caplog.at_level(logging.WARNING, logger="physfm.view"):
        for bad in (
            "/files/../secret.txt",
            "/files/evaluate/../../secret.txt",
            "/files/%2e%2e/secret.txt",
            f"/files/{outside}",  # an absolute path: /files//tmp/...
            "/files/evaluate/leak",  # a link leading outside
            "/files/evaluate",  # a directory
            "/files/evaluate/nope.png",
        ):
            response = client.get(bad)
            assert response.status_code == 404, bad
            assert b"not yours" not in response.data
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) >= 5, refused
    assert (
        safe_file(runs, str(outside)) is None
        and safe_file(runs, "evaluate/metrics.json") is not None
    )


def test_cli_refuses_a_missing_runs_dir(tmp_path, capsys):
    from physfm.cli import main

    assert main(["view", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["view", str(tmp_path), "--threads", "0"]) == 2
    assert "--threads 0" in capsys.readouterr().err


def test_cli_warns_off_loopback_and_names_a_taken_port(tmp_path, capsys, monkeypatch):
    import physfm.view.app
    from physfm.cli import main

    class TakenPort:
        def run(self, host, port, debug):
            raise OSError(98, "Address already in use")

    monkeypatch.setattr(physfm.view.app, "create_app", lambda root, bench: TakenPort())
    monkeypatch.setattr(physfm.view.app, "prefetch", lambda root, bench: None)
    # the verb's setting would outlive the test
    monkeypatch.setattr("torch.set_num_threads", lambda n: None)
    assert main(["view", str(tmp_path), "--host", "0.0.0.0", "--port", "8765"]) == 2
    err = capsys.readouterr().err
    assert (
        "warning: --host 0.0.0.0 serves" in err
        and "cannot listen on 0.0.0.0:8765: Address already in use" in err
    )


# ---------------------------------------------------------------------------------------------- the
# browser
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_driver(profile: Path):
    """Headless Debian Chromium through its chromedriver; skips naming the packages when they are
    missing."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip(
            "needs Debian's chromium and chromium-driver packages (apt-get install -y chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        # without these its connections are refused on air-gapped machines
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1500,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def start_viewer(root: Path, port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "physfm.cli", "view", str(root), "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"physfm view exited with {proc.returncode}:\n{log_path.read_text()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise AssertionError(
        f"physfm view did not listen on {port} within 60 s:\n{log_path.read_text()}"
    )


@pytest.mark.slow
def test_page_in_a_real_browser(runs, tmp_path):
    """The run list shows every run (the broken one as an error card), the frame slider changes the
    rollout image, the α slider changes the steered frame and the readout; timings and a screenshot
    are saved in tmp_path."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from data_pipelines.run_record import recorded_finish

    # A copied run: its files' modification times say 2001, its metrics.json says when it finished.
    for name in ("metrics.json", "report.md"):
        os.utime(runs / "evaluate" / name, (978_307_200, 978_307_200))
    finished = recorded_finish(json.loads((runs / "evaluate" / "metrics.json").read_text()))
    port = free_port()
    server = start_viewer(runs, port, tmp_path / "server.log")
    driver = chromium_driver(tmp_path / "profile")
    timings = {}
    try:
        wait = WebDriverWait(driver, 90, poll_frequency=0.05)
        text = lambda css: driver.find_element(By.CSS_SELECTOR, css).text
        # a property of the figure a dcc.Graph shows
        plotly = lambda graph, expr: driver.execute_script(
            f"const g = document.querySelector('#{graph} .js-plotly-plot'); return {expr};"
        )

        start = time.perf_counter()
        driver.get(f"http://127.0.0.1:{port}/")
        wait.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#rollout-frames .heatmaplayer image")
        )
        wait.until(lambda d: "α = 0" in text("#steer-readout"))
        timings["first_page_load_s"] = round(time.perf_counter() - start, 3)

        run_list = text("#run-list")
        for rel in ("evaluate", "export", "tokenizer-eval", "steer/probe"):
            assert rel in run_list, (rel, run_list)
        assert BROKEN in text("#run-list .error-card") and "metrics.json" in text(
            "#run-list .error-card"
        )
        card = next(
            c
            for c in driver.find_elements(By.CSS_SELECTOR, "#run-list details")
            if "evaluate" in c.text
        )
        assert (
            finished.astimezone().strftime("%Y-%m-%d %H:%M") in card.text
            and "2001" not in card.text
        ), card.text

        # The method selector opens on the run's default_method; the run's mean curves sit at its
        # horizons.
        checked = driver.find_element(By.CSS_SELECTOR, "#rollout-method input:checked")
        assert checked.get_attribute("value") == DEFAULT_METHOD
        wait.until(lambda d: plotly("rollout-curve", "g.data.length") >= 2)
        means = plotly("rollout-curve", "g.data.filter(t => t.name.includes('mean')).map(t => t.x)")
        assert means and all(list(x) == [1, 2, 4] for x in means), means

        frames = driver.find_element(By.ID, "rollout-frames")
        before = frames.screenshot_as_png
        assert "truth t+1" in frames.text
        driver.find_element(By.CSS_SELECTOR, "#rollout-frame [role=slider]").send_keys(
            Keys.ARROW_RIGHT
        )
        wait.until(lambda d: "truth t+2" in d.find_element(By.ID, "rollout-frames").text)
        time.sleep(0.3)  # the figure is redrawn after its titles
        assert frames.screenshot_as_png != before, (
            "the rollout image did not change with the frame slider"
        )

        # plays on from t+2: t+3, then wraps to t+1
        driver.find_element(By.ID, "rollout-play").click()
        wait.until(lambda d: "truth t+3" in d.find_element(By.ID, "rollout-frames").text)
        driver.find_element(By.ID, "rollout-play").click()
        wait.until(lambda d: "play" in d.find_element(By.ID, "rollout-play").text)

        assert driver.find_elements(By.CSS_SELECTOR, "#tok-frames .heatmaplayer image")
        assert "reconstruction" in text("#tok-frames") and "VRMSE" in text("#tok-msg")
        # embedding + 2 blocks
        assert len(driver.find_elements(By.CSS_SELECTOR, "#probe-r2 .bars .point")) == 3
        probe = json.loads((runs / "steer" / "probe" / "metrics.json").read_text())
        lowest = min(
            v for k, v in probe.items() if k in ("probe_r2_code_histogram", "probe_r2_embedding")
        )
        # every baseline line in view
        assert plotly("probe-r2", "g.layout.yaxis.range[0]") < min(lowest, 0.0)

        # At α = 0 the steered − unsteered map is zero: a named colour bar on a field-scaled range,
        # not ±1e-12.
        error_trace = "g.data[g.data.length - 1]"
        assert plotly("steer-frames", f"{error_trace}.colorbar.title.text") == "steered − unsteered"
        assert plotly("steer-frames", f"{error_trace}.zmax") > 1e-6
        assert "identical (0 everywhere)" in text("#steer-frames")
        driver.find_element(By.ID, "steer-frames").screenshot(
            str(tmp_path / "steer-frames-alpha0.png")
        )

        steered = driver.find_element(By.ID, "steer-frames")
        before, readout = steered.screenshot_as_png, text("#steer-readout")
        handle = driver.find_element(By.CSS_SELECTOR, "#steer-alpha [role=slider]")
        start = time.perf_counter()
        # 0 → 1
        handle.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
        wait.until(lambda d: text("#steer-readout").startswith("α = 1 "))
        timings["alpha_change_s"] = round(time.perf_counter() - start, 3)
        wait.until(lambda d: "α = 1" in d.find_element(By.ID, "steer-frames").text)
        time.sleep(0.3)
        after = text("#steer-readout")
        assert after != readout and "computed in" in after, after
        assert steered.screenshot_as_png != before, "the steered frame did not change with α"
        dose = driver.find_element(By.ID, "steer-dose")
        # α = 0 and α = 1 plotted
        assert len(dose.find_elements(By.CSS_SELECTOR, ".scatterlayer .point")) >= 2

        driver.set_window_size(
            1500, driver.execute_script("return document.body.scrollHeight") + 100
        )
        driver.execute_script("window.scrollTo(0, 0)")
        shot = tmp_path / "physfm_view.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        timings["screenshot"] = str(shot)
        # one per fixed panel, to look at
        for name in ("rollout-curve", "steer-frames", "probe-r2", "run-list"):
            driver.find_element(By.ID, name).screenshot(str(tmp_path / f"{name}.png"))
        (tmp_path / "timings.json").write_text(json.dumps(timings, indent=1))
        print(f"physfm view: {json.dumps(timings)}")
    finally:
        driver.quit()
        server.terminate()
        server.wait(timeout=20)


@pytest.mark.slow
def test_live_server_refuses_traversal(runs, tmp_path):
    """Raw requests a browser would have normalised away: 404, and one log line each."""
    port = free_port()
    server = start_viewer(runs, port, tmp_path / "server.log")
    try:
        paths = (
            "/files/../view_fixtures.py",
            "/files/..%2f..%2fetc%2fpasswd",
            "/files//etc/passwd",
            "/../etc/passwd",
        )
        for path in paths:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", path)
            assert conn.getresponse().status == 404, path
            conn.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert (tmp_path / "server.log").read_text().count("refused /") == len(paths)


def test_quickstart_report_ends_with_the_viewer_command(tmp_path):
    from physfm.quickstart.pipeline import Context, render_report, view_command

    ctx = Context(out=tmp_path / "qs")
    report = render_report({"total_seconds": 1.0, "machine": "m", "stages": {}}, ctx)
    assert (
        view_command("runs/quickstart", ".venv/bin/physfm")
        == ".venv/bin/physfm view runs/quickstart"
    )
    assert (
        report.rstrip()
        .splitlines()[-1]
        .startswith(f"Look at this run in a browser: `physfm view {ctx.out}`")
    )


@pytest.mark.parametrize("space", [(32,), (8, 8), (4, 8, 8)])
def test_field_panels_share_one_scale_and_centre_the_error(space):
    import numpy as np

    from physfm.view import figures

    rng = np.random.default_rng(0)
    truth, pred = rng.standard_normal(space), rng.standard_normal(space)
    fig = figures.triptych(
        [("truth", truth), ("model", pred)], ("error", pred - truth), (-3.0, 3.0), 5.0, "u"
    )
    assert [a.text for a in fig.layout.annotations] == ["truth", "model", "error"]
    if len(space) == 1:  # curves: the y ranges are the scales
        assert fig.layout.yaxis.range == (-3.0, 3.0) and fig.layout.yaxis3.range == (-5.0, 5.0)
    else:
        values, error = fig.data[0], fig.data[2]
        assert (values.zmin, values.zmax) == (fig.data[1].zmin, fig.data[1].zmax) == (-3.0, 3.0)
        assert (error.zmin, error.zmax, error.zmid) == (-5.0, 5.0, 0)
        assert np.asarray(values.z).shape == (8, 8)  # a 3D field shows its middle slice


@pytest.mark.slow
def test_cli_on_a_busy_port_is_one_line_and_exit_2_before_announcing(tmp_path):
    """A real listener holds the port; the verb must say so in one line, exit 2, and never print the
    "on http://…" line of a page that will not be served."""
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "physfm.cli", "view", str(tmp_path), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "http://" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"physfm view: error: port {port} on 127.0.0.1 is in use by another program; "
        f"pick another with --port (e.g. --port {port + 1})"
    ], result.stderr


def test_a_prediction_outside_the_truths_range_widens_the_scale_with_a_note():
    import numpy as np

    from physfm.view import figures

    truth = np.linspace(0.0, 1.0, 64).reshape(8, 8)
    pred = truth * 3.0  # up to 3: beyond the truth's [0, 1]
    fig = figures.triptych(
        [("truth", truth), ("model", pred)], ("model − truth", pred - truth), (0.0, 1.0), 2.0, "u"
    )
    assert (
        (fig.data[0].zmin, fig.data[0].zmax) == (fig.data[1].zmin, fig.data[1].zmax) == (0.0, 3.0)
    )
    note = [a.text for a in fig.layout.annotations if a.name == "scale-note"]
    assert note == ["model: values outside [0, 1], so the colour scale is widened to [0, 3]"]
    inside = figures.triptych(
        [("truth", truth), ("model", truth)], ("model − truth", 0 * truth), (0.0, 1.0), 1e-12, "u"
    )
    assert (inside.data[0].zmin, inside.data[0].zmax) == (0.0, 1.0)
    # a zero error is not noise-scaled
    assert inside.data[2].zmax == pytest.approx(figures.ERROR_FLOOR)
    assert inside.data[2].colorbar.title.text == "model − truth"
    assert [a.text for a in inside.layout.annotations if a.name == "scale-note"] == [
        "model − truth: identical (0 everywhere)"
    ]


def test_the_horizon_curve_puts_the_runs_means_at_its_horizons():
    import numpy as np

    from physfm.view import figures

    fig = figures.horizon_curve(
        {"ar": np.array([0.1, 0.2, 0.3, 0.4])}, {"ar": {1: 0.1, 4: 0.3, 8: 0.5}}, 0, "u"
    )
    mean = next(t for t in fig.data if "mean" in t.name)
    assert list(mean.x) == [1, 4, 8] and list(mean.y) == [0.1, 0.3, 0.5]


def test_the_probe_axis_keeps_a_negative_baseline_in_view():
    from physfm.view import figures

    metrics = {
        "layers": {"embedding": {"r2": 0.2}, "blocks.0.resid": {"r2": 0.5}},
        "probe_r2_code_histogram": -0.8,
    }
    low, high = figures.probe_layers(metrics).layout.yaxis.range
    assert low < -0.8 and high >= 1.0


def test_a_run_is_dated_by_its_recorded_finish_not_its_file_times(tmp_path):
    from data_pipelines.run_record import write_metrics
    from physfm.view.runs import read_run

    run = tmp_path / "evaluate"
    run.mkdir()
    write_metrics(run / "metrics.json", {"horizons": [1]})
    (run / "metrics.json").touch()
    os.utime(run / "metrics.json", (978_307_200, 978_307_200))  # as after a copy that kept no times
    assert (
        not read_run(run, tmp_path).date.startswith("2001")
        and "file time" not in read_run(run, tmp_path).date
    )
    # written before runs recorded their finish
    (run / "metrics.json").write_text('{"horizons": [1]}')
    os.utime(run / "metrics.json", (978_307_200, 978_307_200))
    assert read_run(run, tmp_path).date.startswith("2001-01-01") and read_run(
        run, tmp_path
    ).date.endswith("(file time)")


def test_a_direction_under_any_file_name_is_found(tmp_path):
    from physfm.view.runs import find_directions

    (tmp_path / "nu.direction").write_bytes(b"weights")
    (tmp_path / "nu.direction.json").write_text('{"format": "physfm-direction"}')
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "notes.json").write_text("not json")
    (tmp_path / "notes").write_text("a file of the same stem that is no direction")
    assert [p.name for p, _ in find_directions(tmp_path)] == ["nu.direction"]
