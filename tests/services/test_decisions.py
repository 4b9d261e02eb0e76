"""Decision ids: only the spelling `issue` produces verifies, so one decision counts once."""

from __future__ import annotations

import base64
import random
import string
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from promptops.db.models import DecisionRow, FeedbackRow
from promptops.errors import DecisionNotFound, InvalidInput
from promptops.services.decisions import DecisionToken, TokenCodec
from tests.samples import triage

CODEC = TokenCodec(b"test-secret")
TOKEN = DecisionToken(prompt_id=3, version_id=7, experiment_id=2, arm=1, epoch=4, decided_at=1_800_000_000.25)


def _issued() -> str:
    # An id whose body ends in a character with spare low bits and whose parts hold '-' or '_',
    # so every kind of respelling below changes something. Its random bytes are seeded: the
    # test ids name it, and parallel workers (pytest-xdist) must collect the same tests.
    rng = random.Random(0)
    with mock.patch("promptops.services.decisions.os.urandom", rng.randbytes):
        for _ in range(10_000):
            d = CODEC.issue(TOKEN)
            body, sig = d[2:].split(".")
            if body[-1] in "AQgw" and any(c in "-_" for c in body + sig):
                return d
    raise AssertionError("no suitable id issued")


D = _issued()
BODY, SIG = D[2:].split(".")


def _spare_bits(text: str) -> str:
    """The same bytes with the unused low bits of the last character set."""
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    return text[:-1] + alphabet[alphabet.index(text[-1]) | 0b11]


def spellings() -> list[str]:
    """Other spellings of D (or near misses) that a lenient decoder reads as the same bytes."""
    std = D.replace("-", "+").replace("_", "/")
    return [
        D + "=",
        D + "==",
        D + "!",
        D + "%",
        D + "\n",
        D + " ",
        " " + D,
        D + "\x00",
        D.replace(".", ".."),
        D.replace(".", ".="),
        "d_" + BODY + "=." + SIG,
        D + ".",
        "D_" + D[2:],
        std,
        "d_" + _spare_bits(BODY) + "." + SIG,
        D + "%3D",
        D.upper(),
        "d_" + base64.urlsafe_b64encode(base64.urlsafe_b64decode(BODY + "=")).decode() + "." + SIG,
        D.replace(".", "\n."),
        D + "\r\n",
        D + "\t",
        D[:-1],
        D + "A",
        "d_" + BODY + "." + SIG + "=" * 4,
        D + "\u00a0",
    ]


def test_the_issued_id_verifies():
    assert CODEC.verify(D) == DecisionToken(
        prompt_id=3, version_id=7, experiment_id=2, arm=1, epoch=4, decided_at=1_800_000_000.25
    )


@pytest.mark.parametrize("spelling", spellings(), ids=repr)
def test_no_other_spelling_verifies(spelling):
    assert spelling != D
    assert CODEC.verify(spelling) is None


@given(
    st.integers(0, len(D)),
    st.integers(0, 2),
    st.characters(codec="utf-8") | st.sampled_from(list("=.!%\n-_+/ A")),
)
def test_no_edit_of_an_id_verifies(pos, kind, char):
    edited = (
        D[:pos] + char + D[pos:],  # insert
        D[:pos] + char + D[pos + 1 :],  # replace
        D[:pos] + D[pos + 1 :],
    )[kind]  # delete
    assert edited == D or CODEC.verify(edited) is None


def test_feedback_under_any_spelling_counts_once(ops, prompts_dir: Path):
    (prompts_dir / "triage.yaml").write_text(triage(None), encoding="utf-8")
    ops.sync()
    d = ops.serve("triage", {"message": "x"})
    did = d.decision_id
    assert ops.feedback(did, 1) == "recorded"
    body, sig = did[2:].split(".")
    variants = [
        did + "=",
        did + "==",
        did + "!",
        did + "%",
        did + "\n",
        did.replace(".", ".."),
        "d_" + _spare_bits(body) + "." + sig,
    ]
    for v in variants:
        with pytest.raises((DecisionNotFound, InvalidInput)):
            ops.feedback(v, 1)
        item = None
        with pytest.raises((DecisionNotFound, InvalidInput)):
            item = ops.serving.prepare_feedback(v, 1)
        assert item is None
    assert ops.feedback(did, 1) == "duplicate"
    with ops.ctx.tx() as s:
        assert s.scalar(select(func.count()).select_from(DecisionRow)) == 1
        assert s.scalar(select(func.count()).select_from(FeedbackRow)) == 1
    arm = next(a for a in ops.experiments.get(d.experiment_id).arms if a.version == d.version)
    assert (arm.decisions, arm.feedback, arm.reward_sum) == (1, 1, 1.0)
