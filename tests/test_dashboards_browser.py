"""Both dashboards as a new user meets them, in headless Chromium, after one tiny pipeline run.

`run.py dashboard` starts the MLflow UI and the local ZenML dashboard; the browser must find the
run, a metric value and the registered model with @champion in MLflow, and the run (not an
onboarding form) in ZenML. Screenshots go to $TUNELINE_SCREENSHOTS or the test's tmp dir (the
path is printed). Ctrl-C (SIGINT) must stop both servers.

Needs Debian's `chromium` and `chromium-driver`: installed with apt-get when running as root,
otherwise the test is skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_e2e import run_cli

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
MODEL = "browser-model"

pytestmark = pytest.mark.slow


def _ensure_chromium() -> None:
    if Path(CHROMIUM).exists() and Path(DRIVER).exists():
        return
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{CHROMIUM} / {DRIVER} missing and not root with apt-get to install chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"],
    ):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(cmd)}): {r.stderr[-500:]}")


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("selenium", reason="selenium is in the dev extra: pip install -e .[dev]")
    _ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(180)
    yield driver
    driver.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _page_text(driver) -> str:
    from selenium.common.exceptions import WebDriverException

    try:
        text = driver.execute_script("return document.body ? document.body.innerText : ''") or ""
        return " ".join(text.split())  # one line: "training (4)" whatever the layout's line breaks
    except WebDriverException:  # the renderer is busy (a loaded CPU): ask again
        return ""


def _open(driver, url: str, *wanted: str, shot: Path, timeout: float = 180) -> str:
    """Load `url`, wait until every string in `wanted` is on the page, save a screenshot."""
    driver.get(url)
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = _page_text(driver)
        if all(w in text for w in wanted):
            break
        time.sleep(1)
    time.sleep(1)  # let charts finish drawing for the screenshot
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(driver).send_keys(Keys.ESCAPE).perform()  # a welcome modal, where one opened
    driver.save_screenshot(str(shot))
    missing = [w for w in wanted if w not in text]
    assert not missing, f"{url}: {missing} not on the page (screenshot {shot}); it shows:\n{text[:3000]}"
    return text


def test_both_dashboards_show_the_run_its_scores_and_the_champion(tmp_path, browser):
    from mlflow import MlflowClient

    home = tmp_path / "home"
    shots = Path(os.environ.get("TUNELINE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {shots}")
    r = run_cli(
        home,
        "--config",
        "configs/sft.yaml",
        "--set",
        "train.max_steps=60",
        "--set",
        "train.eval_steps=30",
        "--set",
        "train.save_steps=30",
        "--set",
        "eval.max_samples=8",
        "--set",
        f"registry.model_name={MODEL}",
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "promoted to @champion" in r.stdout, r.stdout[-2000:]
    run_name = re.search(r"^Run (\S+): completed", r.stdout, re.M).group(1)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version_by_alias(MODEL, "champion")
    rouge = client.get_run(mv.run_id).data.metrics["finetuned_rougeL"]

    mlflow_port, zenml_port = _free_port(), _free_port()
    env = {**os.environ, "TUNELINE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("ZENML_CONFIG_PATH", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "run.py",
            "dashboard",
            "--mlflow-port",
            str(mlflow_port),
            "--zenml-port",
            str(zenml_port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        deadline, urls = time.monotonic() + 300, {}
        while time.monotonic() < deadline and len(urls) < 2:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            output.append(line)
            urls = dict(re.findall(r"^\s+(MLflow|ZenML):\s+(http://\S+)", "".join(output), re.M))
        assert set(urls) == {"MLflow", "ZenML"}, "".join(output)[-3000:]

        # MLflow: the experiment opens on its runs (not the GenAI traces view), the run is there.
        _open(browser, urls["MLflow"], run_name, "Runs", shot=shots / "mlflow-experiment.png")
        # The run page: its held-out scores, with the value the run logged.
        mlflow, ml_view = f"http://127.0.0.1:{mlflow_port}", "?workflowType=machine_learning"
        experiment = client.get_run(mv.run_id).info.experiment_id
        run_url = f"{mlflow}/#/experiments/{experiment}/runs/{mv.run_id}"
        _open(browser, run_url + ml_view, "finetuned_rougeL", f"{rouge:g}"[:5], shot=shots / "mlflow-run.png")
        # Its charts open on the training curves, before the one-point scores.
        text = _open(
            browser, f"{run_url}/model-metrics{ml_view}", "training (", shot=shots / "mlflow-charts.png"
        )
        curves, scores = re.search(r"training \(\d+\)", text), re.search(r"Model metrics \(\d+\)", text)
        assert curves and (scores is None or curves.start() < scores.start()), "curves come first"
        # The registry: the model with @champion on the registered version (the UI greets with a
        # modal advertising its new registry view; `_open` closes it before the screenshot).
        text = _open(
            browser, f"{mlflow}/#/models{ml_view}", MODEL, "champion", shot=shots / "mlflow-models.png"
        )
        assert re.search(rf"{MODEL} .*@ ?champion ?: ?Version {mv.version}\b", text), text[:2000]

        # ZenML: straight to the runs, no onboarding survey (the list shortens long run names).
        text = _open(browser, urls["ZenML"], run_name[:26], shot=shots / "zenml-runs.png")
        assert "/survey" not in browser.current_url and "/onboarding" not in browser.current_url
        assert "newsletter" not in text.lower()
        # The run's DAG: its steps (their artifacts and visualizations are a click away).
        from selenium.webdriver.common.by import By

        links = [
            a.get_attribute("href") or "" for a in browser.find_elements(By.CSS_SELECTOR, "a[href*='/runs/']")
        ]
        run_page = next(h for h in links if re.search(r"/runs/[0-9a-f-]{36}$", h))
        _open(
            browser, run_page, "train_model", "evaluate_model", "register_model", shot=shots / "zenml-dag.png"
        )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
        output.append(rest or "")
    assert proc.returncode == 0, "".join(output)[-3000:]
    assert _closed(mlflow_port) and _closed(zenml_port), "a dashboard kept its port after Ctrl-C"
