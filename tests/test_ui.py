"""The real thing: `suite ui` starts a real `mlflow server` over an embedded store, a smoke sweep
logs to it over HTTP, the leaderboard is rendered and logged, and headless Chromium (Debian's
`chromium`) loads the leaderboard run's pages; the rendered DOM must show the run and its
leaderboard artifacts. Skipped, with the reason, where Chromium is missing."""

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from results.ui import VIEW, free_port
from suite.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1400,1000"]
ARTIFACTS = ("leaderboard.csv", "leaderboard.md", "leaderboard.html", "leaderboard.png",
             "leaderboard.txt", "leaderboard_table.json")


def chromium(url: str, profile: Path, budget_ms: int, screenshot: Path | None = None) -> str:
    """The DOM after the page (an SPA) ran for ``budget_ms`` of virtual time."""
    shutil.rmtree(profile, ignore_errors=True)  # a fresh profile every time
    mode = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    res = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
                          f"--virtual-time-budget={budget_ms}", *mode, url],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def rendered(url: str, profile: Path, wanted: list[str]) -> str:
    """The DOM once every wanted string is in it (longer budgets on retry)."""
    dom = ""
    for budget in (15000, 30000, 60000):
        dom = chromium(url, profile, budget)
        if all(w in dom for w in wanted):
            return dom
    missing = [w for w in wanted if w not in dom]
    raise AssertionError(f"{url}: {missing} not in the rendered page:\n{dom[-3000:]}")


class UI:
    """`suite ui` as a subprocess of its own session; its stdout read line by line."""

    def __init__(self, uri: str, port: int, cwd: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "suite", "ui", "--port", str(port), "--tracking-uri", uri],
            cwd=cwd, stdout=subprocess.PIPE, stderr=open(cwd / "ui.log", "w"), text=True,
            start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.server_pid = None

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1.0)
            except queue.Empty:
                assert self.proc.poll() is None, "suite ui exited early; see ui.log"
                continue
            if m := re.search(r"mlflow server pid (\d+)", line):
                self.server_pid = int(m.group(1))
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"suite ui printed no line matching {pattern!r} in {timeout}s")

    def stop(self):
        """SIGTERM to `suite ui` (it stops its server); SIGKILL by pid if either lingers."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.server_pid:
            try:
                os.killpg(self.server_pid, signal.SIGKILL)  # normally gone already
            except ProcessLookupError:
                pass


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install chromium)")
def test_leaderboard_run_in_the_mlflow_ui(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ui = UI(f"sqlite:///{tmp_path}/mlflow.db", port, tmp_path)
    try:
        ui.wait_for(re.escape(f"{base}/#/experiments?"))  # up, no leaderboard run yet
        assert ui.server_pid
        assert main(["run", "--profile", "smoke", "--attention", "softmax", "--attention",
                     "entmax", "--tracking-uri", base, "--no-progress"]) == 0
        assert "logged: leaderboard run" in capsys.readouterr().out
        assert main(["ui", "--tracking-uri", base]) == 0  # a server: just its URL
        url = re.search(r"(http://\S+/experiments/(\w+)/runs/(\w+))/artifacts/leaderboard.md"
                        r"\?workflowType=machine_learning\s", capsys.readouterr().out)
        check_pages(url.group(1), url.group(3), tmp_path)
    finally:
        ui.stop()
    assert ui.proc.returncode is not None


def check_pages(run_url: str, run_id: str, tmp_path: Path) -> None:
    profile = tmp_path / "chromium-profile"
    page = f"{run_url}/artifacts/leaderboard.png{VIEW}"
    dom = rendered(page, profile, [run_id, *ARTIFACTS, 'alt="leaderboard.png"'])
    img = re.search(r'<img[^>]*alt="leaderboard.png"[^>]*>', dom).group(0)
    assert 'src="blob:' in img  # the PNG came back from the server and is shown
    overview = rendered(run_url + VIEW, profile,
                        ["Attention leaderboard", "flip_flop", "softmax"])  # the description
    assert "leaderboard | smoke" in overview and "Finished" in overview
    md_page = f"{run_url}/artifacts/leaderboard.md{VIEW}"
    md = rendered(md_page, profile, ["<h1", "Attention leaderboard", 'role="cell"', "64 (1x)"])
    cell = r'role="cell"[^>]*><span[^>]*>{}</span>'
    assert re.search(cell.format("softmax"), md)  # the markdown table, rendered as a table
    assert re.search(cell.format(r"<strong>[\d.]+</strong>[^<]*"), md)  # the best, in bold
    shot = Path("/tmp") / f"suite-ui-{os.getpid()}.png"
    chromium(md_page, profile, 30000, screenshot=shot)
    assert shot.read_bytes()[:4] == b"\x89PNG"
    print(f"screenshot: {shot}")
