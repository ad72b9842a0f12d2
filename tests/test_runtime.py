"""Heap trimming between stages, in the driver and on the workers."""

from __future__ import annotations

import sys

import pytest
from distributed import Client

from pipeline.runtime import release_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_release_memory_in_the_driver_and_on_every_worker(client: Client) -> None:
    block = bytearray(b"x" * (64 * 2**20))  # freed below: something to hand back
    del block
    assert release_memory() is True
    # as `run` calls it between stages: a plain function through Client.run
    assert list(client.run(release_memory).values()) == [True, True]
