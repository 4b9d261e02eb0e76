"""Schemathesis over `/openapi.json`: generated requests to every operation never get a 5xx."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.schemas import BaseSchema

from promptops.config import Settings
from promptops.server.app import create_app
from promptops.server.runtime import server_ops
from tests.samples import PLAIN, TRIAGE


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaseSchema]:
    """The app over a fresh SQLite database with a running experiment, as a schemathesis schema."""
    root = tmp_path_factory.mktemp("fuzz")
    prompts = root / "prompts"
    prompts.mkdir()
    (prompts / "triage.yaml").write_text(TRIAGE)
    (prompts / "plain.yaml").write_text(PLAIN)
    config = Settings(
        database_url=f"sqlite:///{root / 'promptops.db'}",
        prompts_dir=prompts,
        writer_flush_seconds=0.005,
        allowed_hosts=("localhost", "testserver"),
    )
    ops = server_ops(config)
    ops.sync()
    assert ops.experiments.list_experiments(status="running"), "the fuzzed app needs a running experiment"
    app = create_app(config, ops=ops, background=False)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    # Schemathesis keeps the app's lifespan open until exit; stop the writer before the
    # temporary database goes away.
    app.state.runtime.stop()
    ops.close()


# Not `schemathesis.pytest.from_fixture`: its lazy loader reads a private pytest attribute that
# pytest 9 removed (`Function._nodeid`), so the operations are driven through Hypothesis directly.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_errors_and_answers_match_their_schemas(
    api_schema: BaseSchema, mode: GenerationMode
) -> None:
    failures: dict[str, BaseException] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])

        try:
            check()
        except Unsatisfiable:  # no invalid input exists (an operation without parameters)
            continue
        except Exception as exc:  # report every operation, not only the first that fails
            failures[operation.label] = exc
    assert not failures, "\n\n".join(f"{label}: {exc}" for label, exc in failures.items())


BIG = 2**70  # past SQLite's and PostgreSQL's integers; found by the fuzzing above


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        pytest.param("GET", f"/v1/experiments/{BIG}", None, id="experiment"),
        pytest.param("GET", f"/v1/experiments/-{BIG}/history", None, id="history"),
        pytest.param("POST", f"/v1/experiments/{BIG}/stop", None, id="stop"),
        pytest.param("GET", f"/v1/prompts/plain/versions/{BIG}", None, id="version"),
        pytest.param("GET", f"/v1/prompts/plain/diff?a={BIG}&b=1", None, id="diff"),
        pytest.param("POST", "/v1/prompts/plain/labels/x", {"version": BIG}, id="label"),
        pytest.param("POST", "/v1/prompts/plain/render", {"version": BIG}, id="render"),
        pytest.param("POST", "/v1/experiments", {"prompt": "plain", "versions": [1, BIG]}, id="create"),
        pytest.param("GET", f"/v1/audit?experiment_id={BIG}", None, id="audit-experiment"),
        pytest.param("GET", f"/v1/audit?experiment_id=-{BIG}", None, id="audit-negative"),
        pytest.param("GET", f"/v1/audit?offset={BIG}", None, id="audit-offset"),
    ],
)
def test_huge_integers_are_client_errors(api_schema: BaseSchema, method: str, url: str, body: object) -> None:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=api_schema.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, url, json=body)

    r = asyncio.run(call())
    assert 400 <= r.status_code < 500, r.text
