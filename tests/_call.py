"""Test support shared by the call tests (pytest puts this folder on ``sys.path``:
``from _call import``): the skip mark for machines where two local peers cannot connect, and
the thread setting the model runs with in a call. The call harness itself (two peers in one
process, the tiny model) is product code: ``iwcodec.call.loopback``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from iwcodec.call.rtc import can_gather_host_candidates

#: aioice offers no candidate for 127.0.0.1: on a machine with nothing but loopback two local
#: peers cannot connect.
needs_host_address = pytest.mark.skipif(
    not can_gather_host_candidates(),
    reason="no network address besides loopback: aioice gathers no candidate for 127.0.0.1",
)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the model on one intra-op thread, as ``iwcodec.call.session.configure_threads``
    arranges in a call, where two or more threads run it at once on a few cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
