"""``--cem-shard K/N``: which tests of the session run on shard K of N.

Scope ``session`` (the default without another splitter): every test whose node id hashes to K modulo N runs
(SHA-256 of the node id, so the split is the same on every machine and in every pytest-xdist worker); the others
are deselected (pytest's summary counts them as such). Tests that use ``cem_sweep`` run on every shard: each
computes shard K of the sweep's items (the fixture passes ``shard=(K, N)``), and ``cem report merge`` joins the
parts into the whole sweep. So the shards' tests add up to the session's, each test once.

Scope ``sweeps``: the plugin selects no test; only the sweeps' items are split. It is the scope when another plugin
splits the tests (pytest-split's ``--splits``/``--group``, pytest-shard's ``--num-shards``), and ``auto`` (the
default) picks it then; ``session`` beside one of them is a usage error (a test would run only where both splits
keep it, and many nowhere). Beside pytest-split, which selects its group last (a ``trylast`` hook registered after
this module), the ``cem_sweep`` tests are held out of its split and put back after it, so they run on every
machine and every part of their sweeps is computed. pytest-shard selects before any other plugin sees the tests:
a ``cem_sweep`` test then runs on one machine only, computing one part; ``cem report merge`` names the missing
shards of such a sweep.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

SCOPES = ("session", "sweeps")
#: Items held out of another plugin's split, put back after it (the ``cem_sweep`` tests under scope ``sweeps``).
HELD_KEY = pytest.StashKey[list]()
#: The effective scope of the session (``session`` or ``sweeps``), set when the plugin is configured.
SCOPE_KEY = pytest.StashKey[str]()


def other_splitter(config: pytest.Config) -> str | None:
    """The plugin that splits this session's tests besides ``--cem-shard``, as its flags (None when none)."""
    splits, group = config.getoption("splits", None), config.getoption("group", None)
    if splits is not None and group is not None:
        return f"pytest-split (--splits {splits} --group {group})"
    num, shard_id = config.getoption("num_shards", None), config.getoption("shard_id", None)
    if isinstance(num, int) and num > 1:
        return f"pytest-shard (--num-shards {num} --shard-id {shard_id})"
    return None


def effective_scope(config: pytest.Config, scope: str, shard: Any) -> str:
    """``scope`` (``auto``, ``session`` or ``sweeps``) resolved for this session: ``auto`` is ``sweeps`` beside
    another splitter, else ``session``. :class:`pytest.UsageError` for ``session`` beside another splitter."""
    other = other_splitter(config)
    if scope == "auto":
        return "sweeps" if other else "session"
    if scope == "session" and other and shard is not None:
        raise pytest.UsageError(
            f"--cem-shard-scope=session splits the tests, and {other} splits them too: a test would run only where "
            "both keep it (many would run nowhere). Let one plugin split the tests: --cem-shard-scope=sweeps (cem "
            "splits only the items of each cem_sweep; the default beside another splitter), or drop the other "
            "plugin's flags."
        )
    return scope


def shard_of(nodeid: str, n: int) -> int:
    """The shard (0..n-1) of the test ``nodeid``: SHA-256 of the node id, modulo ``n`` (stable across machines and
    processes, unlike ``hash()``)."""
    return int.from_bytes(hashlib.sha256(nodeid.encode("utf-8")).digest()[:8], "big") % n


def uses_sweep(item: pytest.Item) -> bool:
    return "cem_sweep" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Runs after the plain hooks (``-k``, ``-m``, ``--deselect``, ...) and before pytest-split's, which is
    registered later with ``trylast`` too."""
    from .session import BASE_SETTINGS_KEY

    settings = config.stash.get(BASE_SETTINGS_KEY, None)
    if settings is None or settings.shard is None:
        return
    k, n = settings.shard
    if config.stash.get(SCOPE_KEY, "session") == "sweeps":
        held = [it for it in items if uses_sweep(it)]
        if held and other_splitter(config):
            config.stash[HELD_KEY] = held
            items[:] = [it for it in items if not uses_sweep(it)]
        return
    keep, deselected = [], []
    for it in items:
        (keep if uses_sweep(it) or shard_of(it.nodeid, n) == k else deselected).append(it)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = keep


def restore_held(config: pytest.Config, items: list, order: dict) -> None:
    """Put back the tests held out of another plugin's split, in collection order (``order``: id(item) -> its
    position before the hooks ran)."""
    held = config.stash.get(HELD_KEY, None)
    if not held:
        return
    del config.stash[HELD_KEY]
    items[:] = sorted([*items, *held], key=lambda it: order.get(id(it), len(order)))
