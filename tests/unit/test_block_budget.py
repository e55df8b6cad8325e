"""The byte budget of large blocks in flight: first come first served, and nothing lost when a waiter is cancelled."""

import asyncio

from seafbackup_agent.sync.engine import BlockBudget


def test_reservations_wait_their_turn_and_give_back_on_exit_and_on_cancel():
    async def scenario() -> list[str]:
        budget = BlockBudget(10)
        order: list[str] = []

        async def use(name: str, size: int, hold: asyncio.Event) -> None:
            async with budget.reserve(size):
                order.append(name)
                await hold.wait()

        first, second, third = asyncio.Event(), asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(use("a", 6, first))
        await asyncio.sleep(0)
        b = asyncio.create_task(use("b", 6, second))  # waits: 12 > 10
        c = asyncio.create_task(use("c", 3, third))  # fits, but comes after b
        await asyncio.sleep(0.01)
        assert order == ["a"] and budget.used == 6
        b.cancel()  # a waiter cancelled: c is next and takes nothing of b's
        await asyncio.sleep(0.01)
        assert order == ["a", "c"] and budget.used == 9
        big = asyncio.create_task(use("big", 50, asyncio.Event()))  # larger than the budget: alone, at its limit
        first.set()
        third.set()
        await asyncio.sleep(0.01)
        assert order == ["a", "c", "big"] and budget.used == 10
        big.cancel()
        await asyncio.gather(a, b, c, big, return_exceptions=True)
        assert budget.used == 0
        return order

    assert asyncio.run(scenario()) == ["a", "c", "big"]
