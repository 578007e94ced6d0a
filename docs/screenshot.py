"""Screenshots of the MLflow UI for the README, driving headless Chromium over the DevTools
protocol (aiohttp, which Ray brings): plain `chromium --screenshot` cannot click, and MLflow 3
opens in its GenAI view with an assistant panel over a third of the page.

    .venv/bin/python docs/screenshot.py http://127.0.0.1:5055 smoke docs/   # by docs/screenshot.sh

Writes, for the glyph-pretrained trial with the best acc@untrained: mlflow_study.png (the
study's runs, trials named by condition under the parent), mlflow_trial_curves.png (its finetuning
accuracy curves), mlflow_trial_heatmap.png (its last accuracy heatmap, in Artifacts) and
mlflow_trial_forgetting.png.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
from mlflow import MlflowClient

PORT = 9333
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1600,1000", "--hide-scrollbars",
]  # fmt: skip


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws, self.n = ws, 0

    async def call(self, method: str, **params):
        self.n += 1
        await self.ws.send_str(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expression: str):
        out = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return out.get("result", {}).get("value")

    async def wait(self, expression: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not await self.js(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied {expression}")
            await asyncio.sleep(0.5)

    async def goto(self, url: str, ready: str) -> None:
        # Through a blank page: a hash change alone keeps the single-page app's old view.
        await self.call("Page.navigate", url="about:blank")
        await self.call("Page.navigate", url=url)
        await self.wait(ready)
        await asyncio.sleep(2.0)  # charts and images settle
        # Plotly's tool bar shows on every chart in a headless window: hide it.
        await self.js(
            "document.head.insertAdjacentHTML('beforeend', "
            "'<style>.modebar-container{display:none !important}</style>')"
        )

    async def click(self, text: str) -> bool:
        """Click the first button or link whose text or aria-label is `text`."""
        return await self.js(
            f"""(() => {{ const t = {json.dumps(text)};
            const el = [...document.querySelectorAll('button, a, [role=button], [role=tab]')]
              .find(e => e.innerText.trim() === t || e.getAttribute('aria-label') === t);
            if (el) el.click(); return !!el; }})()"""
        )

    async def shot(self, path: Path) -> None:
        data = (await self.call("Page.captureScreenshot", format="png"))["data"]
        path.write_bytes(base64.b64decode(data))
        print(f"wrote {path}")


def image_shown(path: str) -> str:
    """The artifact view shows `path` and has drawn a picture (its src is a blob: URL)."""
    return (
        f"document.body?.innerText.includes({json.dumps(path)}) && "
        "[...document.images].some(i => i.complete && i.naturalWidth >= 300)"
    )


def no_spinner(text: str) -> str:
    return (
        f"document.body && document.body.innerText.includes({json.dumps(text)}) && "
        "!document.querySelector('[class*=spinner], [class*=Spinner], [role=progressbar]')"
    )


async def take(uri: str, study: str, out: Path) -> None:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    trials = client.search_runs(
        [exp.experiment_id],
        "tags.`transinv.role` = 'trial'",
        order_by=["metrics.`finetune/acc_untrained` DESC"],
    )
    run = next(r for r in trials if r.data.params.get("pretrain.dataset") != "none")
    heatmap = client.list_artifacts(run.info.run_id, "heatmaps/finetune_acc_grid")[-1].path
    base = f"{uri}/#/experiments/{exp.experiment_id}"
    async with aiohttp.ClientSession() as session:
        target = json.loads(
            urllib.request.urlopen(
                urllib.request.Request(
                    f"http://127.0.0.1:{PORT}/json/new?about:blank", method="PUT"
                ),
            ).read()
        )
        async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            page = Page(ws)
            await page.call("Page.enable")
            await page.goto(f"{base}/runs", "document.body?.innerText.includes('Run Name')")
            # The UI's mode and panels are per browser (local storage): pick the model-training
            # view and close the assistant once; later pages keep them.
            await page.click("Model training")
            await page.click("Close")
            await page.goto(f"{base}/runs", no_spinner(study))
            # The parent run's expander (the trials are nested under it).
            await page.js(
                "document.querySelector('button[data-component-id*=runnamecellrenderer]').click()"
            )
            await page.wait(f"document.body.innerText.includes({json.dumps(run.info.run_name)})")
            await asyncio.sleep(2.0)
            await page.shot(out / "mlflow_study.png")
            await page.goto(f"{base}/runs/{run.info.run_id}/model-metrics", no_spinner("finetune"))
            await page.js(  # only the finetuning accuracy curves
                """(() => { const i = document.querySelector('input[placeholder*="Search metric"]');
                const p = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value');
                p.set.call(i, 'finetune/acc'); i.dispatchEvent(new Event('input', {bubbles: true}));
                })()"""
            )
            await page.wait("document.querySelectorAll('svg.main-svg').length >= 4")
            await asyncio.sleep(4.0)
            await page.shot(out / "mlflow_trial_curves.png")
            await page.goto(
                f"{base}/runs/{run.info.run_id}/artifacts/{heatmap}", image_shown(heatmap)
            )
            await page.shot(out / "mlflow_trial_heatmap.png")
            await page.goto(
                f"{base}/runs/{run.info.run_id}/artifacts/forgetting.png",
                image_shown("forgetting.png"),
            )
            await page.shot(out / "mlflow_trial_forgetting.png")


def main(uri: str, study: str, out: str) -> None:
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen(
            ["chromium", *FLAGS, f"--remote-debugging-port={PORT}", f"--user-data-dir={profile}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{PORT}/json/version", timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
            asyncio.run(take(uri.rstrip("/"), study, Path(out)))
        finally:
            browser.terminate()
            browser.wait()


if __name__ == "__main__":
    main(*sys.argv[1:4])
