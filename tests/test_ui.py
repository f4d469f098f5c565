"""The real thing: `suite ui` starts a real `mlflow server` over an embedded store, a smoke sweep
of two tasks logs to it over HTTP, the leaderboard is rendered and logged, and headless
Chromium (Debian's `chromium`), each time with a fresh profile as a new user's browser, loads
the URLs `suite ui` prints and each task's experiment from the experiment list. The rendered
pages must show the ranked leaderboard and the runs tables with their metric columns, in
MLflow's model-training view (not its GenAI one). Screenshots are kept under
/tmp/suite-ui-<pid>/. Skipped, with the reason, where Chromium is missing."""

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
         "--hide-scrollbars", "--window-size=1920,1080"]
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


GENAI = ("Judges", "Prompts & versions", "Agent versions")  # the GenAI view's side bar
SHOTS = Path("/tmp") / f"suite-ui-{os.getpid()}"


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
                     "entmax", "--task", "flip_flop", "--task", "copy", "--tracking-uri", base,
                     "--no-progress"]) == 0
        assert "logged: leaderboard run" in capsys.readouterr().out
        assert main(["ui", "--tracking-uri", base]) == 0  # a server: just its URLs
        printed = capsys.readouterr().out
        url = re.search(r"(http://\S+/experiments/(\w+)/runs/(\w+))/artifacts/leaderboard.md"
                        r"\?workflowType=machine_learning\s", printed)
        charts = dict(re.findall(r"task (\w+), chart view: (\S+)", printed))
        assert set(charts) == {"flip_flop", "copy"}
        SHOTS.mkdir(exist_ok=True)
        check_pages(url.group(1), url.group(3), tmp_path)
        check_ranked_table(url.group(0).strip(), base, tmp_path)
        check_experiments_from_the_list(base, tmp_path)
        check_chart_view(charts["copy"], tmp_path)
    finally:
        ui.stop()
    assert ui.proc.returncode is not None


def check_ranked_table(url: str, base: str, tmp_path: Path) -> None:
    """The leaderboard URL that `suite ui` prints shows each task's table ranked by its score,
    in the model-training view; so do the task's diagnostics tables below it."""
    from results import leaderboard as lb
    from results.leaderboard import build, ranking
    from results.tracking import Tracker

    tab, _ = build(base)
    diag = lb.diagnostics(lb.select(lb.records(Tracker(base)))[0])
    dom = rendered(url, tmp_path / "chromium-rank", ["Attention leaderboard", "score",
                                                    "rank: score = mean exact match"])
    assert not any(g in dom for g in GENAI), "the leaderboard opened in the GenAI view"
    names = r'role="cell"[^>]*><span[^>]*>(softmax|entmax)</span>'
    shown = re.findall(names, dom)
    want = []
    for task in ("copy", "flip_flop"):  # the markdown lists tasks by name
        order = [a for a, _, _ in ranking(tab.filter(tab["task"] == task))]
        views = lb.diagnostic_views(tab.filter(tab["task"] == task), diag, order)
        assert views  # softmax and entmax log diagnostics: the tables repeat the ranked rows
        want += order + [row[0] for _, _, rows in views for row in rows]
    assert shown == want, (shown, want)
    chromium(url, tmp_path / "chromium-rank", 30000, screenshot=SHOTS / "leaderboard.png")


def check_experiments_from_the_list(base: str, tmp_path: Path) -> None:
    """A new user's browser opens the experiment list, then each task's experiment by its
    link: the runs table shows the metric columns (score and exact match per multiple of
    the training length) and the short run names, in the model-training view."""
    listing = rendered(f"{base}/#/experiments", tmp_path / "chromium-list",
                       ["flip_flop", "copy", "leaderboard"])
    links = dict((name, href) for href, name in re.findall(
        r'href="(#/experiments/\d+)"[^>]*>(?:<[^>]+>)*(flip_flop|copy)<', listing))
    assert set(links) == {"flip_flop", "copy"}, listing[-2000:]
    for task, href in sorted(links.items()):
        page = f"{base}/{href}"  # as the list links it: no view in the URL
        profile = tmp_path / f"chromium-{task}"
        dom = rendered(page, profile, ["metrics.`score`", "metrics.`exact_match_2x`",
                                       "softmax s0", "entmax s0"])
        assert not any(g in dom for g in GENAI), f"{task} opened in the GenAI view"
        for col in ("metrics.`exact_match_1x`", "attributes.`Dataset`"):
            assert f'col-id="{col}"' in dom, col
        assert f"{task} (" in dom  # the dataset input, named by the task
        chromium(page, profile, 30000, screenshot=SHOTS / f"experiment-{task}.png")


def check_chart_view(url: str, tmp_path: Path) -> None:
    """The chart view `suite ui` prints for a task: a chart per metric against length."""
    dom = rendered(url, tmp_path / "chromium-chart", ["Search metric charts", "Model metrics"])
    assert not any(g in dom for g in GENAI)
    titles = set(re.findall(r">(exact_match|token_acc|score)<", dom))
    assert titles == {"exact_match", "token_acc", "score"}, titles  # one chart per metric
    chromium(url, tmp_path / "chromium-chart", 30000, screenshot=SHOTS / "chart-copy.png")


def check_pages(run_url: str, run_id: str, tmp_path: Path) -> None:
    profile = tmp_path / "chromium-profile"
    page = f"{run_url}/artifacts/leaderboard.png{VIEW}"
    dom = rendered(page, profile, [run_id, *ARTIFACTS, 'alt="leaderboard.png"'])
    img = re.search(r'<img[^>]*alt="leaderboard.png"[^>]*>', dom).group(0)
    assert 'src="blob:' in img  # the PNG came back from the server and is shown
    overview = rendered(run_url + VIEW, profile,
                        ["Attention leaderboard", "flip_flop", "softmax"])  # the description
    assert "leaderboard | smoke" in overview and "Finished" in overview
    assert not any(g in overview for g in GENAI)
    md_page = f"{run_url}/artifacts/leaderboard.md{VIEW}"
    md = rendered(md_page, profile, ["<h1", "Attention leaderboard", 'role="cell"', "64 (1x)"])
    cell = r'role="cell"[^>]*><span[^>]*>{}</span>'
    assert re.search(cell.format("softmax"), md)  # the markdown table, rendered as a table
    assert re.search(cell.format(r"<strong>[\d.]+</strong>[^<]*"), md)  # the best, in bold
    shot = SHOTS / "leaderboard-md.png"
    chromium(md_page, profile, 30000, screenshot=shot)
    assert shot.read_bytes()[:4] == b"\x89PNG"
    print(f"screenshots: {SHOTS}")
