"""appliance/daemon.py: SIGHUPs reload one at a time. Two reloads running
at once would apply maps together and count the workers' confirmations of
each other's rules (WorkerSet.reload keeps only the latest's)."""
import asyncio

from appliance.daemon import Daemon


def test_a_reload_asked_during_another_runs_after_it():
    d = Daemon.__new__(Daemon)               # only what the ordering uses
    d._reload_lock = asyncio.Lock()
    steps = []

    async def reload(n=iter(range(1, 10))):
        i = next(n)
        steps.append(f"start {i}")
        await asyncio.sleep(0)               # a reload awaits its executor and its workers
        await asyncio.sleep(0)
        steps.append(f"end {i}")

    d._reload = reload

    async def scenario():
        await asyncio.gather(d._reload_in_turn(), d._reload_in_turn())

    asyncio.run(scenario())
    assert steps == ["start 1", "end 1", "start 2", "end 2"]
