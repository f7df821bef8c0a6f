"""Facts about the machine a run uses: the allocator setting that keeps CPU steps' memory."""

from __future__ import annotations

import platform
import resource

import pytest

from loraft.system import keep_freed_memory

BLOCK = 64 * 2**20  # above glibc's largest mmap threshold (32 MB): mapped afresh by default


def page_faults_to_fill(size: int) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = bytearray(size)
    block[:: resource.getpagesize()] = b"\1" * len(range(0, size, resource.getpagesize()))
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_freed_block_is_reused_without_new_page_faults() -> None:
    assert keep_freed_memory()
    page_faults_to_fill(BLOCK)  # the first use maps the pages
    pages = BLOCK // resource.getpagesize()
    assert page_faults_to_fill(BLOCK) < pages / 10  # by default: one fault per page, every time
