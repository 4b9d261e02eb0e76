"""Self-describing, signed decision ids: serving needs no synchronous write to hand one out.

A decision id carries the prompt, version, experiment, arm, epoch and time of the serve, signed with
the database's shared secret (HMAC-SHA256, truncated to 96 bits). Feedback naming a valid id counts
even if the batched writer has not stored the decision yet: the feedback path stores it first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

_PAYLOAD = struct.Struct(">IIIHIQ")  # prompt, version, experiment (0 = none), arm, epoch, time (us)
_NO_ARM = 0xFFFF
_RANDOM_BYTES = 6
_SIG_BYTES = 12
PREFIX = "d_"


@dataclass(frozen=True)
class DecisionToken:
    """The facts a decision id carries."""

    prompt_id: int
    version_id: int
    experiment_id: int | None
    arm: int | None
    epoch: int | None
    decided_at: float


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenCodec:
    """Issues and verifies decision ids with one secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def issue(self, token: DecisionToken) -> str:
        """A new decision id for these facts (unique thanks to random bytes)."""
        body = _PAYLOAD.pack(
            token.prompt_id, token.version_id, token.experiment_id or 0,
            _NO_ARM if token.arm is None else token.arm, token.epoch or 0,
            int(token.decided_at * 1_000_000)) + os.urandom(_RANDOM_BYTES)
        sig = hmac.new(self._secret, body, hashlib.sha256).digest()[:_SIG_BYTES]
        return PREFIX + _b64(body) + "." + _b64(sig)

    def verify(self, decision_id: str) -> DecisionToken | None:
        """The facts of a genuine id, or None for anything forged, truncated or foreign."""
        if not isinstance(decision_id, str) or not decision_id.startswith(PREFIX) \
                or len(decision_id) > 128:
            return None
        body_text, _, sig_text = decision_id[len(PREFIX):].partition(".")
        try:
            body, sig = _unb64(body_text), _unb64(sig_text)
        except (ValueError, TypeError):
            return None
        if len(body) != _PAYLOAD.size + _RANDOM_BYTES or len(sig) != _SIG_BYTES:
            return None
        expected = hmac.new(self._secret, body, hashlib.sha256).digest()[:_SIG_BYTES]
        if not hmac.compare_digest(sig, expected):
            return None
        prompt_id, version_id, exp_id, arm, epoch, micros = _PAYLOAD.unpack(
            body[:_PAYLOAD.size])
        has_exp = exp_id != 0
        return DecisionToken(prompt_id=prompt_id, version_id=version_id,
                             experiment_id=exp_id if has_exp else None,
                             arm=None if arm == _NO_ARM else arm,
                             epoch=epoch if has_exp else None, decided_at=micros / 1_000_000)
