"""MLflow tracking over HTTP with `MlflowClient` only: the one door to MLflow.

A study is one MLflow experiment holding a parent run (the space file, its digest, sampler,
package versions) and one child run per trial (params: the trial's full flat config; metrics:
step-indexed curves under the keys of `metrics.py`; artifacts: heatmaps, figures, tables).

The fluent API (`mlflow.start_run`) is not used: its active run is process-global, and trials
must reattach to their own run after a restore. Every evaluation is one `log_batch` call, which
is two orders of magnitude faster than a call per metric (see benchmarks/bench_tracking.py).

Deciding when to log what is the caller's business (the Ray trial in `study/trial.py`); turning
runs back into tables is `results.py`.
"""

from __future__ import annotations

import base64
import json
import math
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from transinv.config import format_value

MAX_METRICS_PER_CALL = 1000
MAX_PARAMS_TAGS_PER_CALL = 100
PARAM_VALUE_LIMIT = 6000

# Every run tag of the project, spelled here only.
TAG_STUDY = "transinv.study"
TAG_ROLE = "transinv.role"
"""`study` on the parent run, `trial` on a trial's run."""
TAG_DIGEST = "transinv.space_digest"
TAG_TRIAL = "ray.trial_id"
TAG_PARENT = "mlflow.parentRunId"
TAG_ERROR = "transinv.error"
TAG_PARAMS = "transinv.params"
"""The keys the searcher chose for a trial (the rest are fixed or defaults)."""
TAG_HOST = "transinv.host"
TAG_PID = "transinv.pid"
TAG_NODE = "ray.node_id"
TAG_PRETRAIN_CACHE = "transinv.pretrain_cache"
TAG_PROGRESS = "transinv.progress"
"""`<phase> <step>` of the run's latest delivered evaluation."""
TAG_DELIVERED = "transinv.delivered"
"""How many of the trial's records (evaluations in order, then its end summary) the server holds:
set in the same call as a record's metrics, so a resumed trial knows what not to log again."""
TAG_WARNING = "transinv.warning"
"""Something a trial recovered from (an unreadable checkpoint it fell back from)."""
TAG_SUMMARY = "transinv.summary."
"""Prefix of the tags (`transinv.summary.time`, ...) holding end-of-trial numbers as JSON
{metric key: value}: as metrics, each would be a one-point chart on the run's page. Read back
by `summary_values` (and so by `results.load_runs`, as columns)."""
TAG_FINISHED_TRIALS = "transinv.finished_trials"
TAG_ERRORS = "transinv.errors"
EXPERIMENT_KIND = "mlflow.experimentKind"
ROLE_STUDY, ROLE_TRIAL = "study", "trial"


def summary_tag(name: str) -> str:
    return f"{TAG_SUMMARY}{name}"


def summary_values(tags: Mapping[str, str]) -> dict[str, float]:
    """The end-of-trial numbers a run's summary tags hold, under their metric keys."""
    out: dict[str, float] = {}
    for key, text in tags.items():
        if key.startswith(TAG_SUMMARY):
            out.update({k: float(v) for k, v in json.loads(text).items()})
    return out


# Every MLflow filter string of the project is built by these (backticks for dotted names).


def role_filter(role: str) -> str:
    """A study's trial runs (`trial`) or its parent run (`study`)."""
    return f"tags.`{TAG_ROLE}` = '{role}'"


def study_filter(study: str) -> str:
    """The parent run of `study`."""
    return f"tags.`{TAG_STUDY}` = '{study}' and {role_filter(ROLE_STUDY)}"


def trial_filter(trial_id: str) -> str:
    """The run of one Ray trial."""
    return f"tags.`{TAG_TRIAL}` = '{trial_id}'"


def status_filter(status: str) -> str:
    return f"attributes.status = '{status}'"


def all_of(*filters: str) -> str:
    """The filters joined with `and`; empty ones are left out."""
    return " and ".join(f for f in filters if f)


class TrackingError(RuntimeError):
    """The tracking server is unusable: the message names the URI and what to do."""


def check_uri(uri: str) -> str:
    """Only HTTP(S) tracking servers: file stores and SQLite break with concurrent trials."""
    if not uri.startswith(("http://", "https://")):
        raise TrackingError(
            f"tracking URI {uri!r} is not an http(s):// server; trials write concurrently, "
            "which file: and sqlite: stores do not support. Start one with "
            "`python -m study ui` or pass --tracking-uri http://HOST:PORT"
        )
    return uri.rstrip("/")


def auth_headers() -> dict[str, str]:
    """The credentials `MlflowClient` sends, from the same environment variables: basic auth
    (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD) or a bearer MLFLOW_TRACKING_TOKEN."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Raise TrackingError within about `timeout_s` unless the server answers a real API call.

    `/health` alone answers even when the API is refused (e.g. a Host-header check), so an
    experiments search follows it. A refused connection is an answer, not a delay: nothing
    listens there, so it fails at once (a caller waiting for a server it started retries).
    """
    uri = check_uri(uri)
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            remaining = max(0.5, deadline - time.monotonic())
            url = f"{uri}/api/2.0/mlflow/experiments/search"
            body = json.dumps({"max_results": 1}).encode()
            headers = {"Content-Type": "application/json", **auth_headers()}
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=min(remaining, 5.0)) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            hint = {
                401: " (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD for a server "
                "with authentication: the values in the cluster's .env)",
                403: " (check the server's --allowed-hosts)",
            }
            raise TrackingError(
                f"MLflow server at {uri} refused an API call: HTTP {exc.code} {exc.reason}"
                + hint.get(exc.code, "")
            ) from exc
        except (OSError, urllib.error.URLError) as exc:
            last = exc
            if isinstance(getattr(exc, "reason", exc), ConnectionRefusedError):
                break
            time.sleep(0.25)
    refused = isinstance(getattr(last, "reason", last), ConnectionRefusedError)
    raise TrackingError(
        f"MLflow server at {uri} is unreachable "
        + ("(connection refused: nothing listens there)" if refused else f"({last})")
        + "; start it, or omit --tracking-uri to let `python -m study run` start a local one"
    )


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _param_value(value: Any) -> str:
    text = format_value(value)
    return text if len(text) <= PARAM_VALUE_LIMIT else text[: PARAM_VALUE_LIMIT - 3] + "..."


class Tracker:
    """Study and trial runs on one tracking server: the project's one door to MLflow.

    Trials, the tuner, the CLI, `results` and `report` all go through it, so the server's
    limits (batch sizes, param length), the filter syntax and the tags are handled here only.
    """

    def __init__(self, uri: str):
        self.uri = check_uri(uri)
        # MLflow prints a "View run at" line per finished run; a study has hundreds.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        # One progress bar per artifact download would bury the report's own output.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self._client = MlflowClient(tracking_uri=self.uri)

    # -- experiments and runs ------------------------------------------------------------------

    def experiment(self, study: str) -> str:
        """The id of the study's experiment, created on first use."""
        found = self._client.get_experiment_by_name(study)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self._client.restore_experiment(found.experiment_id)
            return found.experiment_id
        try:
            # The UI opens experiments of this kind on their runs table, not the GenAI view.
            return self._client.create_experiment(
                study, tags={EXPERIMENT_KIND: "custom_model_development"}
            )
        except Exception:  # another process created it meanwhile
            found = self._client.get_experiment_by_name(study)
            if found is None:
                raise
            return found.experiment_id

    def find_experiment(self, study: str) -> str | None:
        """The id of the study's experiment, None when there is none (nothing is created)."""
        found = self._client.get_experiment_by_name(study)
        return found.experiment_id if found is not None else None

    def studies(self) -> list[tuple[str, str]]:
        """(name, experiment id) of every experiment on the server."""
        return [(e.name, e.experiment_id) for e in self._client.search_experiments()]

    def parent_run(self, experiment_id: str, study: str) -> Any | None:
        """The study's parent run, None when it has none."""
        found = self.find_runs(experiment_id, study_filter(study))
        return found[0] if found else None

    def get_run(self, run_id: str) -> Any:
        return self._client.get_run(run_id)

    def find_runs(self, experiment_id: str, filter_string: str) -> list:
        runs, token = [], None
        while True:
            page = self._client.search_runs(
                [experiment_id], filter_string, max_results=1000, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def study_run(
        self, study: str, digest: str, params: Mapping[str, Any], tags: Mapping[str, str]
    ) -> str:
        """The study's parent run: found by tag when the study resumes, else created."""
        exp = self.experiment(study)
        found = self.parent_run(exp, study)
        if found is not None:
            run_id = found.info.run_id
            self._client.update_run(run_id, status="RUNNING")
            return run_id
        run = self._client.create_run(
            exp,
            run_name=study,
            tags={TAG_STUDY: study, TAG_ROLE: ROLE_STUDY, TAG_DIGEST: digest, **tags},
        )
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def trial_run(
        self,
        study: str,
        parent_run_id: str,
        trial_id: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
        run_name: str | None = None,
    ) -> str:
        """The trial's run: `run_id` from its checkpoint, else the run already tagged with its
        Ray trial id (a trial restarted without a checkpoint), else a new child run named
        `run_name` (default `<study>/<trial id>`). Marked RUNNING either way."""
        exp = self.experiment(study)
        if run_id is None:
            found = self.find_runs(exp, trial_filter(trial_id))
            run_id = found[0].info.run_id if found else None
        if run_id is not None:
            self._client.update_run(run_id, status="RUNNING")
            return run_id
        run = self._client.create_run(
            exp,
            run_name=run_name or f"{study}/{trial_id}",
            tags={
                TAG_STUDY: study,
                TAG_ROLE: ROLE_TRIAL,
                TAG_TRIAL: trial_id,
                TAG_PARENT: parent_run_id,
                **(tags or {}),
            },
        )
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def finish(self, run_id: str, status: str = "FINISHED", error: str | None = None) -> None:
        """End a run as FINISHED, FAILED (with the error as a tag and error.txt) or KILLED."""
        if error:
            self._client.set_tag(run_id, TAG_ERROR, error[:5000])
            self._client.log_text(run_id, error, "error.txt")
        self._client.set_terminated(run_id, status=status)

    # -- logging -------------------------------------------------------------------------------

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        entries = [Param(k, _param_value(v)) for k, v in params.items()]
        for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_CALL):
            self._client.log_batch(run_id, params=chunk)

    def log_metrics(
        self,
        run_id: str,
        values: Mapping[str, float],
        step: int,
        tags: Mapping[str, Any] | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """All values at one step (and tags), in as few calls as the server's limits allow:
        one call for an evaluation of the small preset.

        The tags go with the last call, so they say the whole record arrived. A repeated call
        with the same `timestamp_ms` adds nothing: the server's metric key includes the
        timestamp and it ignores an identical point (how a retry after a lost reply stays
        single)."""
        now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        entries = [
            Metric(k, float(v), now, step)
            for k, v in values.items()
            if v is not None and not (isinstance(v, float) and math.isinf(v))
        ]
        tag_entries = [RunTag(k, _param_value(v)) for k, v in (tags or {}).items()]
        chunks = list(_chunks(entries, MAX_METRICS_PER_CALL)) or [[]]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            self._client.log_batch(run_id, metrics=chunk, tags=tag_entries if last else [])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        entries = [RunTag(k, _param_value(v)) for k, v in tags.items()]
        for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_CALL):
            self._client.log_batch(run_id, tags=chunk)

    def log_figure(self, run_id: str, figure: Any, path: str) -> None:
        self._client.log_figure(run_id, figure, path)

    def log_table(self, run_id: str, data: Any, path: str) -> None:
        self._client.log_table(run_id, data, path)

    def log_dict(self, run_id: str, data: Mapping[str, Any], path: str) -> None:
        self._client.log_dict(run_id, dict(data), path)

    def log_file(self, run_id: str, path: Path, artifact_dir: str | None = None) -> None:
        self._client.log_artifact(run_id, str(path), artifact_dir)

    def log_folder(self, run_id: str, folder: Path, artifact_dir: str | None = None) -> None:
        self._client.log_artifacts(run_id, str(folder), artifact_dir)

    # -- reading back --------------------------------------------------------------------------

    def artifact_paths(self, run_id: str) -> list[str]:
        """The paths at the top of the run's artifacts."""
        return [a.path for a in self._client.list_artifacts(run_id)]

    def download(self, run_id: str, path: str, folder: str | Path) -> Path | None:
        """The run's artifact `path` copied into `folder`; None when the run has none there."""
        try:
            return Path(self._client.download_artifacts(run_id, path, str(folder)))
        except Exception:  # MLflow raises several types for an absent artifact
            return None

    def delivered(self, run_id: str) -> int:
        """How many of a trial's records the server holds (`TAG_DELIVERED`; 0 for none)."""
        return int(self._client.get_run(run_id).data.tags.get(TAG_DELIVERED, 0))

    def metric_history(self, run_id: str, key: str) -> list:
        """Every logged point of `key` (duplicated steps included: see `results.curves`)."""
        return self._client.get_metric_history(run_id, key)


def transient(exc: BaseException) -> bool:
    """Whether a failed tracking call may succeed when repeated: the server unreachable, timing
    out or failing inside (HTTP 5xx, e.g. its database restarting) or throttling (429). A
    refused request (another 4xx) or an error of our own would fail the same way again."""
    status = None
    if isinstance(exc, MlflowException):
        # Connection errors reach us as MlflowException with INTERNAL_ERROR (HTTP 500).
        status = exc.get_http_status_code()
    elif isinstance(exc, OSError):  # requests' errors (artifact uploads) are OSErrors
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None) or 503
    return status is not None and (status >= 500 or status == 429)


class TrackingOutage(TrackingError):
    """The tracking server stayed unreachable for longer than `run.tracking_outage_s`."""


class TrackingQueue:
    """Tracking calls run in order on one background thread, so training never waits on the
    server.

    A call that fails transiently (`transient`) is repeated with backoff (0.5 s doubling to 5 s),
    and the calls after it wait their turn, until the server answers again; an outage longer
    than `outage_s` stops the queue and sets `outage`, which the trial checks after each
    evaluation. Any other failure stops the queue too and is raised by the next `submit` or
    `flush`. Call numbers let a checkpoint tell which calls the server has confirmed: calls
    1..`completed` succeeded, nothing after them is counted as delivered.
    """

    BACKOFF_S = (0.5, 5.0)

    def __init__(self, outage_s: float = 600.0, server: str = "the tracking server") -> None:
        self.outage_s, self.server = outage_s, server
        self._queue: queue.Queue = queue.Queue()
        self._done = threading.Condition()
        self._submitted = 0
        self._completed = 0
        self._results: dict[int, Any] = {}
        self._keep: set[int] = set()
        self._error: BaseException | None = None
        self.outage: TrackingOutage | None = None
        self.retries = 0
        """Failed attempts that were repeated (for tests and the trial's log)."""
        self._thread = threading.Thread(target=self._work, name="tracking", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            number, fn, args, kwargs = self._queue.get()
            try:
                result = self._deliver(fn, args, kwargs)
            except TrackingOutage as exc:
                with self._done:
                    self.outage = exc
                    self._done.notify_all()
                return  # the trial stops; what is left is in its checkpoint
            except BaseException as exc:  # kept for the training thread to raise
                with self._done:
                    self._error = exc
                    self._done.notify_all()
                return
            with self._done:
                if number in self._keep:
                    self._results[number] = result
                self._completed = number
                self._done.notify_all()

    def _deliver(self, fn: Any, args: tuple, kwargs: dict) -> Any:
        failing_since, wait = None, self.BACKOFF_S[0]
        while True:
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                if not transient(exc):
                    raise
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since >= self.outage_s:
                    raise TrackingOutage(
                        f"{self.server} has been unreachable for {now - failing_since:.0f} s, "
                        f"longer than run.tracking_outage_s = {self.outage_s:g} s ({exc})"
                    ) from exc
                self.retries += 1
                time.sleep(min(wait, max(0.0, failing_since + self.outage_s - now)))
                wait = min(wait * 2, self.BACKOFF_S[1])

    def _raise(self) -> None:
        if self._error is not None:
            raise TrackingError(f"tracking failed: {self._error}") from self._error
        if self.outage is not None:
            raise self.outage

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> int:
        """Queue `fn(*args, **kwargs)` without waiting; returns its call number. Raises a
        failure of an earlier call (never waits for the server)."""
        if self._error is not None:
            self._raise()
        self._submitted += 1
        self._queue.put((self._submitted, fn, args, kwargs))
        return self._submitted

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` in turn, retried like any call; waits for and returns its value
        (for what a trial needs before it can train: its run id)."""
        self._raise()
        self._submitted += 1
        number = self._submitted
        self._keep.add(number)
        self._queue.put((number, fn, args, kwargs))
        self._wait_for(number, None)
        return self._results.pop(number)

    @property
    def completed(self) -> int:
        """Calls 1..completed have succeeded (in order)."""
        return self._completed

    def _wait_for(self, number: int, timeout_s: float | None) -> bool:
        with self._done:
            self._done.wait_for(
                lambda: self._completed >= number or self._error or self.outage, timeout_s
            )
            if self._completed >= number:
                return True
        self._raise()
        return False

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait for every queued call (False if `timeout_s` passed first); raise the failure
        or outage that stopped the queue."""
        return self._wait_for(self._submitted, timeout_s)
