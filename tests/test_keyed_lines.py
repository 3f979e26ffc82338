"""One holder per key, a bounded line behind it (relay.keyed_lines)."""

from __future__ import annotations

import asyncio

import pytest

from relay.keyed_lines import KeyedLines, LineFull


async def test_holders_of_one_key_take_turns_and_the_line_is_bounded() -> None:
    lines = KeyedLines(max_waiting=2)
    order: list[str] = []
    release = asyncio.Event()

    async def hold(name: str, *keys: str) -> None:
        async with lines.hold(*keys):
            order.append(name)
            await release.wait()

    first = asyncio.create_task(hold("first", "ip:a", "user:x"))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(hold(n, "ip:a", "user:y")) for n in ("second", "third")]
    other = asyncio.create_task(hold("other", "ip:b", "user:z"))  # another key: no wait
    await asyncio.sleep(0)
    assert order == ["first", "other"]
    with pytest.raises(LineFull):
        async with lines.hold("ip:a"):
            pass
    release.set()
    await asyncio.gather(first, *waiting, other)
    assert order == ["first", "other", "second", "third"]
    async with lines.hold("ip:a"):  # the line is empty again
        pass
    assert not lines._locks
