"""API keys: creation, revocation, and when auth is on."""

from __future__ import annotations

import pytest

from promptops.errors import Conflict, InvalidInput, KeyNotFound
from promptops.services.keys import hash_key, role_for


def test_a_key_is_shown_once_and_only_its_hash_is_stored(ops):
    key = ops.keys.create("serve", name="ci")
    assert key.startswith("po_serve_")
    listed = ops.keys.list_keys()
    assert [(k.role, k.name, k.prefix) for k in listed] == [("serve", "ci", key[:12])]
    assert key not in repr(listed)
    assert ops.keys.table() == {hash_key(key): "serve"}
    assert role_for(key, ops.keys.table()) == "serve"
    assert role_for(key + "x", ops.keys.table()) is None
    with pytest.raises(InvalidInput):
        ops.keys.create("root")


def test_auth_is_off_until_a_key_exists(ops):
    assert not ops.keys.auth_required() and not ops.keys.any()
    ops.keys.create("admin")
    assert ops.keys.auth_required() and ops.keys.any()


def test_revoking_the_last_key_keeps_auth_on_and_says_so(ops):
    ops.keys.create("admin")
    ops.keys.revoke(ops.keys.list_keys()[0].id, actor="cli:tester")
    assert not ops.keys.any()
    assert ops.keys.auth_required()
    entry = ops.registry.audit()[0]
    assert entry.action == "key.revoke" and "auth stays on" in entry.message
    assert entry.actor == "cli:tester"


def test_auth_off_is_explicit_and_needs_no_active_key(ops):
    ops.keys.create("admin")
    with pytest.raises(Conflict, match="revoke them first"):
        ops.keys.auth_off()
    ops.keys.revoke(ops.keys.list_keys()[0].id)
    ops.keys.auth_off(actor="cli:tester")
    assert not ops.keys.auth_required()
    assert [e.action for e in ops.registry.audit()][:2] == ["auth.off", "key.revoke"]
    ops.keys.create("serve")  # a new key turns it back on
    assert ops.keys.auth_required()
    assert ops.registry.audit()[0].action == "auth.on"


def test_revoking_an_unknown_key(ops):
    with pytest.raises(KeyNotFound, match="no key with id 999"):
        ops.keys.revoke(999)
    for key_id in (0, -1, 2**63, 10**30):  # past the INTEGER column: not an OverflowError
        with pytest.raises(KeyNotFound):
            ops.keys.revoke(key_id)


def test_revoking_twice_keeps_the_first_revocation(ops, clock):
    ops.keys.create("admin")
    key = ops.keys.list_keys()[0]
    assert ops.keys.revoke(key.id) is True
    first = ops.keys.list_keys()[0].revoked_at
    entries = len(ops.registry.audit())
    clock.advance(60)
    assert ops.keys.revoke(key.id) is False
    assert ops.keys.list_keys()[0].revoked_at == first
    assert len(ops.registry.audit()) == entries


@pytest.mark.parametrize("name", ["x" * 129, "a\x00b", "\ud800"])
def test_a_key_name_must_be_short_printable_text(ops, name):
    with pytest.raises(InvalidInput, match="name"):
        ops.keys.create("serve", name=name)
    assert ops.keys.list_keys() == []
