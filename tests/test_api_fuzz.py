"""API fuzzing from the app's own OpenAPI schema (schemathesis): whatever a client sends to any endpoint, the
answer is never a server error (5xx). Examples are bounded per endpoint and derandomized.

The HTTP layer is under test here, not the statistics: they are collected from at most 40 images whatever the
request asks (a request may ask for 100 000, the documented bound, which takes minutes), and a started job
is cancelled after each call, so the fuzz costs seconds."""

from __future__ import annotations

import dataclasses
import tempfile
import time
import warnings
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="API fuzzing needs schemathesis (the [test] extra)")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from model_rewrite import Rewriter, StatsConfig  # noqa: E402
from model_rewrite.server.app import create_app  # noqa: E402
from model_rewrite.server.session import EditSession  # noqa: E402

EXAMPLES_PER_ENDPOINT = 10  # random examples per operation (fuzzing phase), besides the schema's boundary cases
FUZZ_STATS_SAMPLES = 40


def _fuzz_session(tmp: Path) -> EditSession:
    rw = Rewriter("tiny", cache_dir=tmp / "cache")
    real_stats = rw.stats

    def small_stats(layer, config=StatsConfig(), progress=None):  # the same code path, on fewer images
        return real_stats(layer, dataclasses.replace(config, num_samples=min(config.num_samples, FUZZ_STATS_SAMPLES)),
                          progress)

    rw.stats = small_stats  # type: ignore[method-assign]
    return EditSession(rw, edits_dir=tmp / "edits", report_seeds=(1000, 1001))


# Built when the module is collected (schemathesis parametrizes from a schema object); its files go to a
# temporary folder removed at exit.
_TMP = tempfile.TemporaryDirectory(prefix="model-rewrite-fuzz-")
SESSION = _fuzz_session(Path(_TMP.name))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    APP = create_app(SESSION, hosts=["testserver"])  # the Host of schemathesis's in-process client
schema = schemathesis.openapi.from_asgi("/api/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_ENDPOINT, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_request_makes_a_server_error(case):
    # the page sends JSON on every change; without it every POST would stop at the 415 guard
    case.call_and_validate(headers={"Content-Type": "application/json"}, checks=[not_a_server_error])
    job = SESSION.cancel()
    deadline = time.monotonic() + 60
    while job is not None and job.state == "running" and time.monotonic() < deadline:
        time.sleep(0.01)


def test_the_fuzz_reaches_every_endpoint():
    """Every operation of the API is in the schema the fuzz reads (so none is left out)."""
    ops = {(op.method.upper(), op.path) for op in (r.ok() for r in schema.get_all_operations())}
    assert len(ops) == 26 and ("POST", "/api/history/{entry_id}/take-out") in ops and ("POST", "/api/history/joint") in ops and ("POST", "/api/live") in ops and ("POST", "/api/edits/{name}/load") in ops and ("GET", "/api/export") in ops
    assert Path(__file__).read_text().count("EXAMPLES_PER_ENDPOINT") >= 2
