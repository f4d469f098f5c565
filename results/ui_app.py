"""The app `suite ui` serves: MLflow's own server app, whose page opens in MLflow's
model-training view unless the browser has chosen a view already.

MLflow 3's UI has two views, GenAI (traces, judges, prompts) and model training (runs,
metrics, charts). Which one a page shows comes from the URL's ``workflowType`` parameter, else
from the browser's local storage (key ``mlflow.workflowType_v1``, written when the user flips
the switch in the sidebar), else GenAI; the ``mlflow.experimentKind`` tag of an experiment is
not consulted while that switch exists. So every experiment of a training suite, opened from
the experiment list, would show the GenAI view. This app adds one line of script to the
page's ``<head>`` that stores the model-training view as the browser's choice when it has made
none; a user who flips the switch keeps their choice. In the same way it gives each experiment
of the suite its first columns (the dataset, the profile, the ``score`` the leaderboard ranks by
and the metric at each multiple of the training length, where MLflow would show none of the
metrics) and each run a colour distinct within its experiment (MLflow hashes run ids to a
small palette, so runs collide). The browser's own choices always win: nothing is set where it
holds a value. Everything else is MLflow's app as is.

It is registered as the MLflow app ``suite-ui`` (entry-point group ``mlflow.app``), which
`suite ui` starts with ``mlflow server --app-name suite-ui``.
"""

from __future__ import annotations

import json
import os
import re

from mlflow.server.fastapi_app import app as mlflow_app

KEY = "mlflow.workflowType_v1"
PAGES = ("/", "/index.html")
#: where the UI keeps an experiment page's state (its shown columns) and the runs' colours
STATE_KEY = "MLflowLocalStorage-1.1-ExperimentPage-{}-ReactComponentState"
COLOURS_KEY = "experimentRunColors"
#: 20 colours, each far from its neighbours (runs are coloured in (attention, seed) order)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#e6550d", "#31a354", "#843c39",
           "#7b4173", "#3182bd", "#fd8d3c", "#74c476", "#ad494a", "#a55194")
SUMMARY = re.compile(r"^(score|[a-z_]+_\d+(\.\d+)?x)$")
LIMIT = 2000  # runs read per experiment for the defaults


def _multiple(key: str) -> float:
    m = re.search(r"_(\d+(?:\.\d+)?)x$", key)
    return float(m.group(1)) if m else -1.0


def defaults() -> tuple[dict[str, dict], dict[str, str]]:
    """Per experiment of the store, the columns its runs table shows at first (the dataset,
    the profile, ``score``, then the metric at each multiple of the training length; for the
    leaderboard, the scores), and a colour per run, distinct within an experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["_MLFLOW_SERVER_FILE_STORE"])
    states, colours = {}, {}
    for exp in client.search_experiments():
        runs = client.search_runs([exp.experiment_id], max_results=LIMIT)
        kinds = {r.data.tags.get("suite.kind") for r in runs}
        if "cell" in kinds:
            keys = {k for r in runs for k in r.data.metrics if SUMMARY.match(k)}
            metrics = sorted(keys, key=lambda k: (k != "score", k.rsplit("_", 1)[0],
                                                  _multiple(k)))
            tags = ["suite.profile"]
        elif "leaderboard" in kinds:
            metrics = sorted({k for r in runs for k in r.data.metrics if k.startswith("score/")})
            tags = ["suite.current", "suite.profile"]
        else:
            continue
        columns = (["attributes.`Dataset`", "attributes.`Source`"]
                   + [f"tags.`{t}`" for t in tags] + [f"metrics.`{m}`" for m in metrics])
        states[STATE_KEY.format(json.dumps([exp.experiment_id]))] = {"selectedColumns": columns}
        ordered = sorted(runs, key=lambda r: (r.data.tags.get("suite.attention", ""),
                                              r.data.tags.get("suite.seed", ""),
                                              r.info.start_time))
        for i, run in enumerate(ordered):
            colours[run.info.run_id] = PALETTE[i % len(PALETTE)]
    return states, colours


def script() -> bytes:
    """The script added to the page: the model-training view, each experiment's first
    columns and the runs' colours, each only where the browser holds no choice of its own."""
    try:
        states, colours = defaults()
    except Exception:  # the page must load whatever the store says: the view alone then
        states, colours = {}, {}
    data = json.dumps({"view": [KEY, "machine_learning"], "states": states,
                       "colours": [COLOURS_KEY, colours]})
    code = ("(function(d){try{var s=window.localStorage;"
            "if(!s.getItem(d.view[0]))s.setItem(d.view[0],JSON.stringify(d.view[1]));"
            "for(var k in d.states)if(!s.getItem(k))s.setItem(k,JSON.stringify(d.states[k]));"
            "var c=JSON.parse(s.getItem(d.colours[0])||'{}'),n=d.colours[1];"
            "for(var r in n)if(!(r in c))c[r]=n[r];"
            "s.setItem(d.colours[0],JSON.stringify(c));}catch(e){}})(" + data + ");")
    return ("<script>" + code.replace("</", "<\\/") + "</script>").encode()


class DefaultView:
    """An ASGI app: MLflow's, with the script added to the HTML page at ``PAGES``."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") not in PAGES:
            return await self.inner(scope, receive, send)
        # ask for the page uncompressed, so that the script can be added to it
        scope = {**scope, "headers": [(k, v) for k, v in scope.get("headers", [])
                                      if k.lower() != b"accept-encoding"]}
        start, body = None, []

        async def collect(message):
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if not message.get("more_body"):
                    await send_page()
            else:
                await send(message)

        async def send_page():
            headers = list(start.get("headers", []))
            page = b"".join(body)
            html = any(k.lower() == b"content-type" and b"text/html" in v.lower()
                       for k, v in headers)
            if html and b"<head>" in page:
                page = page.replace(b"<head>", b"<head>" + script(), 1)
                headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(page)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": page})

        await self.inner(scope, receive, collect)


app = DefaultView(mlflow_app)
