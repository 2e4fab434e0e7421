"""The worker's fetch wait: short while idle (latency), long while a model has a backlog (CPU)."""

from __future__ import annotations

from types import SimpleNamespace

from streaminfer.streams.app import WorkerOptions, WorkerRuntime
from streaminfer.streams.transport import LowLatencyConsumerThread, WorkerApp


class FakeProcessor:
    def __init__(self) -> None:
        self.busy = False
        self.tasks = ["text-embedding"]

    def backlogged(self) -> bool:
        return self.busy


def options() -> WorkerOptions:
    return WorkerOptions(
        bootstrap_servers="127.0.0.1:1",
        redis_url="redis://127.0.0.1:1",
        topic_prefix="t",
        group_id="g",
        model_repository="/nonexistent",
        tasks=["text-embedding"],
        worker_id="w",
        fetch_max_wait_ms=20,
        fetch_max_wait_busy_ms=100,
    )


def test_fetch_wait_follows_the_backlog():
    processor, calls = FakeProcessor(), []
    runtime = WorkerRuntime(
        processor, publisher=None, options=options(), set_fetch_wait=calls.append
    )
    for busy in (False, True, True, False):
        processor.busy = busy
        runtime.adapt_fetch_wait()  # one tick of the timer
    assert calls == [100, 20]  # only changes are applied


def test_fetch_wait_reaches_the_running_fetcher():
    thread = LowLatencyConsumerThread.__new__(LowLatencyConsumerThread)  # as faust's, once started
    thread._consumer = SimpleNamespace(_fetcher=SimpleNamespace(_fetch_max_wait_ms=20))
    app = SimpleNamespace(consumer=SimpleNamespace(_thread=thread))
    WorkerApp.set_fetch_max_wait(app, 100)
    assert thread._consumer._fetcher._fetch_max_wait_ms == 100
    thread._consumer = None  # not started yet: nothing to change, no error
    WorkerApp.set_fetch_max_wait(app, 20)
