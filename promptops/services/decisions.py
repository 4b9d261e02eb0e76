"""Self-describing, signed decision ids: serving needs no synchronous write to hand one out.

A decision id carries the prompt, version, experiment, arm, epoch and time of the serve, signed with
the database's shared secret (HMAC-SHA256, truncated to 96 bits). Feedback naming a valid id counts
even if the batched writer has not stored the decision yet: the feedback path stores it first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import random
import re
import struct
from dataclasses import dataclass

_PAYLOAD = struct.Struct(">IIIHIQ")  # prompt, version, experiment (0 = none), arm, epoch, time (us)
_NO_ARM = 0xFFFF
_RANDOM_BYTES = 6
_SIG_BYTES = 12
PREFIX = "d_"

# The random bytes only make ids unique (the signature makes them unforgeable), so a generator
# seeded from the OS once per process will do: a getrandom() system call per serve cost a third
# of a decision's time under load (bench/http.py). Reseeded in a forked child (`serve --workers`)
# so two workers never draw the same bytes.
_RANDOM = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _RANDOM.seed(os.urandom(32)))
_BODY_CHARS = -(-(_PAYLOAD.size + _RANDOM_BYTES) * 4 // 3)  # unpadded base64url length
_SIG_CHARS = -(-_SIG_BYTES * 4 // 3)
# The one spelling `issue` produces: anything else (padding, other alphabets, spare bits set,
# trailing characters) is another spelling of the same bytes and must not verify, or one decision
# could be counted once per spelling.
_CANONICAL = re.compile(rf"{PREFIX}([A-Za-z0-9_-]{{{_BODY_CHARS}}})\.([A-Za-z0-9_-]{{{_SIG_CHARS}}})")


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


def _unb64(text: str) -> bytes | None:
    """The bytes of an unpadded base64url text, or None unless `text` is their only spelling."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        return None
    return raw if _b64(raw) == text else None


class TokenCodec:
    """Issues and verifies decision ids with one secret."""

    def __init__(self, secret: bytes) -> None:
        # Keyed once: copying the keyed state costs less than keying HMAC again for every id.
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)

    def _sign(self, body: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(body)
        return mac.digest()[:_SIG_BYTES]

    def issue(self, token: DecisionToken) -> str:
        """A new decision id for these facts (unique thanks to random bytes)."""
        body = _PAYLOAD.pack(
            token.prompt_id,
            token.version_id,
            token.experiment_id or 0,
            _NO_ARM if token.arm is None else token.arm,
            token.epoch or 0,
            int(token.decided_at * 1_000_000),
        ) + _RANDOM.getrandbits(8 * _RANDOM_BYTES).to_bytes(_RANDOM_BYTES, "big")
        return PREFIX + _b64(body) + "." + _b64(self._sign(body))

    def verify(self, decision_id: str) -> DecisionToken | None:
        """The facts of a genuine id, or None for anything forged, truncated, foreign or spelled
        otherwise than `issue` spells it (so each decision has exactly one valid id)."""
        if not isinstance(decision_id, str):
            return None
        # fullmatch, not match: `$` would accept a trailing newline.
        m = _CANONICAL.fullmatch(decision_id)
        if m is None:
            return None
        body, sig = _unb64(m.group(1)), _unb64(m.group(2))
        if (
            body is None
            or sig is None
            or len(body) != _PAYLOAD.size + _RANDOM_BYTES
            or len(sig) != _SIG_BYTES
        ):
            return None
        if not hmac.compare_digest(sig, self._sign(body)):
            return None
        prompt_id, version_id, exp_id, arm, epoch, micros = _PAYLOAD.unpack(body[: _PAYLOAD.size])
        has_exp = exp_id != 0
        return DecisionToken(
            prompt_id=prompt_id,
            version_id=version_id,
            experiment_id=exp_id if has_exp else None,
            arm=None if arm == _NO_ARM else arm,
            epoch=epoch if has_exp else None,
            decided_at=micros / 1_000_000,
        )
