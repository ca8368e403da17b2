"""Seeded fault points, for the fault-injection suite and for anyone reproducing a crash.

``FFDISTILL_FAULT=NAME:K`` makes the K-th passage through ``fault_point(NAME)`` kill this process with SIGKILL
(as the OOM killer or a pre-empted job would: no handler, no cleanup); ``NAME:K:enospc`` raises ``OSError``
ENOSPC there instead (a full disk). The points sit where a fault does the most harm: after data is written and
before it is committed. Unset, a point costs one environment lookup.

    label.commit       a block of frames appended to every array, ``frames_done`` not yet advanced
                       (labelling, merging, migrating, on-policy labelling)
    train.checkpoint   a checkpoint written to its temporary file, not yet renamed over the last one
    distill.round      a round's students trained and its frames labelled, ``round.json`` not yet written
"""

from __future__ import annotations

import errno
import os
import signal

_passages: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("FFDISTILL_FAULT")
    if not spec:
        return
    target, _, rest = spec.partition(":")
    if target != name:
        return
    count, _, action = rest.partition(":")
    _passages[name] = _passages.get(name, 0) + 1
    if _passages[name] != int(count or 1):
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"fault point {name}")
    os.kill(os.getpid(), signal.SIGKILL)
