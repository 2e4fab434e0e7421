"""`streaminfer dlq`: filters, --since parsing, letter references, what a letter may never be
replayed to, the replay bound, and records on the DLQ topic that are no dead letters."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest

from streaminfer.cli import build_parser
from streaminfer.dlq import (
    HEADER_REPLAY_OF,
    DlqError,
    DlqReader,
    Entry,
    LetterFilter,
    Replayer,
    parse_ref,
    parse_time,
    refusal,
    replay_count_key,
)
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import DeadLetter, InferenceRequest, Tensor
from streaminfer.settings import Settings

PREFIX = "acme.prod"
TOPIC = f"{PREFIX}.requests.tiny.normal"
DLQ = f"{PREFIX}.dlq"
EXISTING = {TOPIC, f"{PREFIX}.results.tiny", DLQ}


@pytest.fixture
def codec():
    with AvroCodec() as c:
        yield c


def a_request(task: str = "tiny", rid: str = "r-1") -> InferenceRequest:
    return InferenceRequest(
        request_id=rid,
        task=task,
        created_at=1_700_000_000_000,
        inputs=[Tensor.from_numpy("x", np.zeros((1, 3), dtype=np.float32))],
    )


def an_entry(codec, offset: int = 0, request: InferenceRequest | None = None, **fields) -> Entry:
    request = request or a_request(rid=f"r-{offset}")
    payload = fields.pop("payload", None)
    letter = DeadLetter(
        **{
            "source_topic": TOPIC,
            "partition": 0,
            "offset": offset,
            "key": request.request_id.encode(),
            "payload": codec.encode(request) if payload is None else payload,
            "error_code": "TASK_NOT_FOUND",
            "error_message": "not served",
            "at": 1_700_000_000_000,
            **fields,
        }
    )
    decoded = request if payload is None else None
    return Entry(DLQ, 0, 100 + offset, letter, request=decoded)


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2023-11-14T22:13:20Z", 1_700_000_000_000),
        ("2023-11-14T22:13:20.5+00:00", 1_700_000_000_500),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
        ("2023-11-14T22:13:20", 1_700_000_000_000),  # no offset: UTC
        ("2023-11-14", 1_699_920_000_000),
    ],
)
def test_since_takes_iso_8601_and_reads_no_offset_as_utc(text, ms):
    assert parse_time(text) == ms


@pytest.mark.parametrize(
    "text", ["yesterday", "", "1700000000000", "2023-13-01", "2023-11-14T25:00Z"]
)
def test_since_refuses_what_is_not_an_iso_time_with_a_usage_error(text, capsys):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_time(text)
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["dlq", "replay", "--since", text])
    assert exited.value.code == 2 and "ISO-8601" in capsys.readouterr().err


def test_the_cli_parses_filters_and_refuses_negative_counts(capsys):
    args = build_parser().parse_args(
        [
            "dlq",
            "replay",
            "--error-code",
            "A,B",
            "--error-code",
            "C",
            "--source-topic",
            TOPIC,
            "--since",
            "2023-11-14",
            "--key",
            "k",
            "--limit",
            "5",
            "--dry-run",
            "--max-replays",
            "0",
        ]
    )
    where = LetterFilter.from_args(args)
    assert where.error_codes == {"A", "B", "C"} and where.source_topic == TOPIC and where.key == "k"
    assert where.since_ms == 1_699_920_000_000 and where.until_ms is None
    assert (args.limit, args.dry_run, args.max_replays) == (5, True, 0)
    assert args.func.__name__ == "command"
    for bad in (["--limit", "-1"], ["--max-replays", "x"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["dlq", "replay", *bad])
    assert build_parser().parse_args(["dlq", "show", "0:7"]).ref == "0:7"


@pytest.mark.parametrize(
    ("ref", "expected"), [("0:7", (0, 7)), (f"{DLQ}:3:12", (3, 12)), (" 1:2 ", (1, 2))]
)
def test_a_letter_is_named_by_partition_and_offset_with_or_without_its_topic(ref, expected):
    assert parse_ref(ref, DLQ) == expected


@pytest.mark.parametrize(
    "ref", ["7", "a:b", "0:-1", "-1:0", "0:1:2", f"{PREFIX}.audit:0:1", "0:1.5", "0:١"]
)
def test_a_bad_letter_reference_is_refused(ref):
    with pytest.raises(DlqError):
        parse_ref(ref, DLQ)


# --- filters ----------------------------------------------------------------------------------


def test_filters_select_by_code_topic_time_and_key(codec):
    letter = an_entry(codec).letter
    at = letter.at
    assert LetterFilter().matches(letter)
    assert LetterFilter(error_codes=frozenset({"TASK_NOT_FOUND", "X"})).matches(letter)
    assert not LetterFilter(error_codes=frozenset({"UNDECODABLE"})).matches(letter)
    assert LetterFilter(source_topic=TOPIC).matches(letter)
    assert not LetterFilter(source_topic=f"{PREFIX}.requests.tiny.high").matches(letter)
    assert LetterFilter(since_ms=at).matches(letter), "--since is inclusive"
    assert not LetterFilter(since_ms=at + 1).matches(letter)
    assert not LetterFilter(until_ms=at).matches(letter), "--until is exclusive"
    assert LetterFilter(since_ms=at - 1, until_ms=at + 1).matches(letter)
    assert LetterFilter(key="r-0").matches(letter) and not LetterFilter(key="r-1").matches(letter)
    assert not LetterFilter(key="r-0").matches(DeadLetter(TOPIC, 0, 0, b"", "C", "m", key=None))


def test_records_that_are_no_letters_show_only_when_nothing_is_filtered():
    assert LetterFilter().matches(None)
    for where in (
        LetterFilter(error_codes=frozenset({"UNDECODABLE"})),
        LetterFilter(key="k"),
        LetterFilter(since_ms=0),
        LetterFilter(source_topic=TOPIC),
    ):
        assert not where.matches(None)


# --- what is never replayed -------------------------------------------------------------------


def test_a_sound_letter_may_be_replayed(codec):
    assert refusal(an_entry(codec), PREFIX, EXISTING) is None
    undecodable = an_entry(codec, payload=b"junk")  # may decode once the worker is fixed
    assert refusal(undecodable, PREFIX, EXISTING) is None


@pytest.mark.parametrize(
    "source",
    [
        "evil",
        f"{PREFIX}.results.tiny",
        f"{PREFIX}.audit",
        DLQ,
        f"{PREFIX}x.requests.tiny.normal",
        "other.requests.tiny.normal",
        f"{PREFIX}.requests.tiny.urgent",
        f"{PREFIX}.requests.Tiny.normal",
        f"{PREFIX}.requests.tiny.normal\n",
        f"{PREFIX}.requests..normal",
        f"{PREFIX}.requests.tiny",
        f"{PREFIX}.requests.tiny.normal.x",
        "",
    ],
)
def test_a_letter_naming_any_but_a_request_topic_of_this_prefix_is_never_replayed(codec, source):
    entry = an_entry(codec, source_topic=source)
    assert refusal(entry, PREFIX, EXISTING | {source}) == "not-a-request-topic"


def test_a_truncated_letter_is_not_replayed(codec):
    entry = an_entry(
        codec, truncated=True, payload=b"head", payload_length=4000, payload_sha256="ab" * 32
    )
    assert refusal(entry, PREFIX, EXISTING) == "truncated"


def test_a_letter_whose_payload_is_not_what_it_says_is_not_replayed(codec):
    payload = codec.encode(a_request())
    digest = hashlib.sha256(payload).hexdigest()
    assert (
        refusal(
            an_entry(
                codec, payload=payload, payload_sha256=digest.upper(), payload_length=len(payload)
            ),
            PREFIX,
            EXISTING,
        )
        is None
    )
    assert (
        refusal(an_entry(codec, payload=payload, payload_sha256="0" * 64), PREFIX, EXISTING)
        == "payload-mismatch"
    )
    assert (
        refusal(an_entry(codec, payload=payload, payload_length=len(payload) + 1), PREFIX, EXISTING)
        == "payload-mismatch"
    )


def test_an_oversized_payload_is_not_replayed(codec):
    entry = an_entry(codec, payload=b"\x00" * (1 << 20))
    assert refusal(entry, PREFIX, EXISTING) == "oversized"


def test_a_request_on_another_tasks_topic_is_not_replayed_there(codec):
    entry = an_entry(codec, request=a_request(task="other"))
    assert refusal(entry, PREFIX, EXISTING) == "task-mismatch"


def test_a_source_topic_that_does_not_exist_is_not_created_by_a_replay(codec):
    entry = an_entry(codec, source_topic=f"{PREFIX}.requests.gone.low", request=a_request("gone"))
    assert refusal(entry, PREFIX, EXISTING) == "topic-missing"


# --- the replay and its bound -----------------------------------------------------------------


class FakeRedis:
    """The calls the replayer makes, on a dict; the claim script as its Lua says."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.results: set[str] = set()

    def register_script(self, _script: str):
        async def claim(keys, args):
            bound = int(args[0])
            if self.values.get(keys[0], 0) >= bound:
                return -1
            self.values[keys[0]] = self.values.get(keys[0], 0) + 1
            return self.values[keys[0]]

        return claim

    async def exists(self, key: str) -> int:
        return int(key in self.results)

    async def get(self, key: str):
        return None if key not in self.values else str(self.values[key]).encode()

    async def decr(self, key: str) -> int:
        self.values[key] -= 1
        return self.values[key]


class FakeProducer:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple] = []
        self.fail = fail

    async def send_and_wait(self, topic, value, key=None, headers=None):
        if self.fail:
            raise ConnectionError("broker away")
        self.sent.append((topic, value, key, headers))


def replayer(redis, producer, **kwargs) -> Replayer:
    return Replayer(Settings(topic_prefix=PREFIX), redis, producer, **kwargs)


async def test_a_replay_sends_the_original_bytes_and_key_to_the_source_topic(codec):
    redis, producer = FakeRedis(), FakeProducer()
    entry = an_entry(codec)
    line = await replayer(redis, producer).handle(entry, EXISTING)
    assert line["action"] == "replayed" and line["request_id"] == "r-0"
    names_letter = [(HEADER_REPLAY_OF, f"{DLQ}:0:100".encode())]
    assert producer.sent == [(TOPIC, entry.letter.payload, b"r-0", names_letter)]
    digest = hashlib.sha256(entry.letter.payload).hexdigest()
    assert redis.values == {replay_count_key(PREFIX, digest): 1}


async def test_one_payload_is_replayed_at_most_max_replays_times_across_runs(codec):
    redis = FakeRedis()
    payload = b"junk that keeps coming back"
    for run in range(4):  # each run sees the letters so far: the replay is dead-lettered again
        one = replayer(redis, FakeProducer(), max_replays=2)
        lines = [
            await one.handle(an_entry(codec, offset=i, payload=payload), EXISTING)
            for i in range(run + 1)
        ]
        replayed = [line for line in lines if line["action"] == "replayed"]
        assert len(replayed) == (1 if run < 2 else 0), run
        assert one.skipped["duplicate-payload"] == (run if run < 2 else 0)
        assert one.skipped["replay-limit"] == (0 if run < 2 else run + 1)
    assert redis.values[replay_count_key(PREFIX, hashlib.sha256(payload).hexdigest())] == 2
    assert (await replayer(redis, FakeProducer(), max_replays=0).handle(an_entry(codec), EXISTING))[
        "reason"
    ] == "replay-limit", "--max-replays 0 replays nothing"


async def test_a_request_with_a_result_by_now_is_skipped(codec):
    redis, producer = FakeRedis(), FakeProducer()
    redis.results.add(f"{PREFIX}:result:r-0")
    one = replayer(redis, producer)
    assert (await one.handle(an_entry(codec), EXISTING))["reason"] == "has-result"
    assert (await one.handle(an_entry(codec, offset=1), EXISTING))["action"] == "replayed"
    assert len(producer.sent) == 1 and one.skipped == {"has-result": 1} and one.replayed == 1


async def test_a_dry_run_changes_nothing_and_still_reports_the_bound(codec):
    redis, producer = FakeRedis(), FakeProducer()
    dry = replayer(redis, producer, dry_run=True, max_replays=1)
    assert (await dry.handle(an_entry(codec), EXISTING))["action"] == "would-replay"
    assert producer.sent == [] and redis.values == {}
    await replayer(redis, producer, max_replays=1).handle(an_entry(codec), EXISTING)
    again = replayer(redis, FakeProducer(), dry_run=True, max_replays=1)
    assert (await again.handle(an_entry(codec), EXISTING))["reason"] == "replay-limit"


async def test_a_replay_that_fails_to_produce_does_not_count_against_the_bound(codec):
    redis = FakeRedis()
    with pytest.raises(ConnectionError):
        await replayer(redis, FakeProducer(fail=True), max_replays=1).handle(
            an_entry(codec), EXISTING
        )
    assert set(redis.values.values()) == {0}
    assert (await replayer(redis, FakeProducer(), max_replays=1).handle(an_entry(codec), EXISTING))[
        "action"
    ] == "replayed"


class HangingProducer:
    """A broker that takes the record and never acknowledges it."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def send_and_wait(self, topic, value, key=None, headers=None):
        self.started.set()
        await asyncio.Event().wait()


async def test_a_cancelled_replay_keeps_its_claim_so_the_bound_holds(codec):
    redis, producer = FakeRedis(), HangingProducer()
    entry = an_entry(codec, payload=b"sent, never acknowledged")
    task = asyncio.create_task(replayer(redis, producer, max_replays=1).handle(entry, EXISTING))
    await asyncio.wait_for(producer.started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    digest = hashlib.sha256(entry.letter.payload).hexdigest()
    assert redis.values[replay_count_key(PREFIX, digest)] == 1, "possibly sent: counted"
    again = FakeProducer()
    line = await replayer(redis, again, max_replays=1).handle(
        an_entry(codec, offset=1, payload=entry.letter.payload), EXISTING
    )
    assert line["reason"] == "replay-limit" and again.sent == [], "no replay past the bound"


class FlakyProducer(FakeProducer):
    """Fails its first ``failures`` sends (a broker away for a while), then works."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def send_and_wait(self, topic, value, key=None, headers=None):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker away")
        await super().send_and_wait(topic, value, key=key, headers=headers)


async def test_a_produce_failing_for_a_while_replays_each_letter_once_when_run_again(codec):
    """A run stops at the first failed produce (exit 2, the claim given back); runs while the
    broker is away replay nothing more; the run once it is back replays what is left, each
    payload once, and none past the bound."""
    redis, producer = FakeRedis(), FlakyProducer(failures=4)
    letters = [an_entry(codec, offset=i, payload=f"payload {i}".encode()) for i in range(5)]
    producer.failures = 0
    first = replayer(redis, producer, max_replays=1)
    assert (await first.handle(letters[0], EXISTING))["action"] == "replayed"
    producer.failures = 4  # the broker goes away: four runs each fail at their first produce
    for _ in range(4):
        run = replayer(redis, producer, max_replays=1)
        with pytest.raises(ConnectionError):
            for entry in letters:
                await run.handle(entry, EXISTING)
        assert run.replayed == 0 and run.skipped == {"replay-limit": 1}
    last = replayer(redis, producer, max_replays=1)  # back
    lines = [await last.handle(entry, EXISTING) for entry in letters]
    assert [line.get("reason", line["action"]) for line in lines] == [
        "replay-limit",
        *["replayed"] * 4,
    ]
    assert sorted(value for _, value, _, _ in producer.sent) == [
        f"payload {i}".encode() for i in range(5)
    ]
    assert set(redis.values.values()) == {1}, "each payload counted once"


# --- records on the DLQ topic -----------------------------------------------------------------


def reader_with(codec) -> DlqReader:
    reader = DlqReader(Settings(topic_prefix=PREFIX))
    reader._codec = codec
    return reader


def record(value, headers=()):
    return SimpleNamespace(topic=DLQ, partition=1, offset=5, value=value, headers=headers)


@pytest.mark.parametrize("value", [b"", b"\x00\x01junk", b"\xc3\x01" + b"\xff" * 40, None])
async def test_junk_on_the_dlq_topic_is_reported_not_a_crash_and_never_replayed(codec, value):
    entry = await reader_with(codec)._decode(record(value))
    assert entry.letter is None and entry.error
    line = entry.summary()
    assert line["dlq"] == {"topic": DLQ, "partition": 1, "offset": 5}
    assert "not a dead letter" in line["error"]
    skipped = await replayer(FakeRedis(), FakeProducer()).handle(entry, EXISTING)
    assert skipped["reason"] == "not-a-dead-letter"


async def test_a_letter_is_listed_without_its_payload_and_shown_with_it(codec):
    request = a_request(rid="listed")
    letter = DeadLetter(
        TOPIC,
        2,
        9,
        codec.encode(request),
        "TASK_NOT_FOUND",
        "not served",
        key=b"listed",
        at=1_700_000_000_000,
    )
    headers = [("streaminfer-error-type", b"X")]
    entry = await reader_with(codec)._decode(record(codec.encode(letter), headers))
    summary = entry.summary()
    assert summary["request_id"] == "listed" and summary["at"] == "2023-11-14T22:13:20.000Z"
    assert summary["source"] == {"topic": TOPIC, "partition": 2, "offset": 9}
    assert summary["payload_length"] == len(letter.payload) and summary["truncated"] is False
    assert base64.b64encode(letter.payload).decode() not in json.dumps(summary)
    detail = entry.detail()
    assert base64.b64decode(detail["payload_base64"]) == letter.payload
    assert detail["request"]["task"] == "tiny" and detail["request"]["inputs"][0]["shape"] == [1, 3]
    assert detail["headers"] == {"streaminfer-error-type": "X"}


async def test_a_letter_with_a_hostile_payload_and_key_is_listed_safely(codec):
    letter = DeadLetter(
        TOPIC,
        0,
        1,
        b"\xc3\x01" + b"\x00" * 10,
        "UNDECODABLE",
        "\x1b[2J" * 3,
        key=b"\xff\xfe\x1b[31m",
        at=-5,
    )
    entry = await reader_with(codec)._decode(record(codec.encode(letter)))
    assert entry.letter is not None and entry.request is None
    line = json.dumps(entry.summary())
    assert "\x1b" not in line, "control characters are escaped"
    assert json.loads(line)["request_id"] is None and json.loads(line)["at"] == -5


class FakeConsumer:
    """Partitions of the DLQ topic as lists of values; ``late`` arrive after the end offsets."""

    def __init__(
        self, partitions: dict[int, list], late: dict[int, list] | None = None, first: int = 0
    ) -> None:
        self.data = {
            p: [(first + i, v) for i, v in enumerate(values)] for p, values in partitions.items()
        }
        self.ends = {p: first + len(values) for p, values in partitions.items()}
        for p, values in (late or {}).items():
            self.data[p] += [(self.ends[p] + i, v) for i, v in enumerate(values)]
        self.first = first
        self.positions: dict = {}
        self.fetches = 0

    def partitions_for_topic(self, _topic):
        return set(self.data)

    def assign(self, tps):
        self.tps = list(tps)

    async def end_offsets(self, tps):
        return {tp: self.ends[tp.partition] for tp in tps}

    async def beginning_offsets(self, tps):
        return {tp: self.first for tp in tps}

    async def seek_to_beginning(self, tp):
        self.positions[tp] = self.first

    def seek(self, tp, offset):
        self.positions[tp] = offset

    def pause(self, tp):
        pass

    async def position(self, tp):
        return self.positions[tp]

    async def getmany(self, *tps, timeout_ms):
        self.fetches += 1
        out = {}
        for tp in tps:
            records = [
                SimpleNamespace(topic=DLQ, partition=tp.partition, offset=o, value=v, headers=())
                for o, v in self.data[tp.partition]
                if o >= self.positions[tp]
            ][:2]
            if records:
                out[tp] = records
                self.positions[tp] = records[-1].offset + 1
        return out


def fake_reader(codec, consumer) -> DlqReader:
    reader = reader_with(codec)
    reader._consumer = consumer
    reader.existing_topics = {DLQ}
    return reader


async def test_the_scan_stops_at_the_end_offsets_found_at_start(codec):
    letter = codec.encode(DeadLetter(TOPIC, 0, 0, b"x", "C", "m"))
    consumer = FakeConsumer({0: [letter] * 3, 1: [], 2: [b"junk"]}, late={0: [letter] * 5}, first=7)
    reader = fake_reader(codec, consumer)
    seen = [(e.partition, e.offset, e.letter is not None) async for e in reader.entries()]
    assert sorted(seen) == [(0, 7, True), (0, 8, True), (0, 9, True), (2, 7, False)]
    assert reader.total == 4 and consumer.fetches <= 3


async def test_an_empty_or_missing_dlq_topic_ends_at_once(codec):
    consumer = FakeConsumer({0: [], 1: []})
    assert [e async for e in fake_reader(codec, consumer).entries()] == [] and consumer.fetches == 0
    missing = fake_reader(codec, consumer)
    missing.existing_topics = set()
    assert [e async for e in missing.entries()] == []


async def test_a_scan_that_stops_progressing_fails_instead_of_hanging(codec, monkeypatch):
    import streaminfer.dlq as dlq

    monkeypatch.setattr(dlq, "STALL_S", 0.05)
    consumer = FakeConsumer({0: [b"junk"]})
    consumer.ends[0] = 5  # the broker says 5; only one record ever comes
    with pytest.raises(DlqError, match="no record"):
        _ = [e async for e in fake_reader(codec, consumer).entries()]


async def test_show_reads_one_offset_of_one_partition(codec):
    consumer = FakeConsumer({0: [b"a", b"b", b"c"], 1: [b"d"]})
    entries = [e async for e in fake_reader(codec, consumer).entries(0, 1, 2)]
    assert [(e.partition, e.offset) for e in entries] == [(0, 1)]


async def test_huge_text_in_a_hostile_letter_is_capped_in_the_listing_not_in_show(codec):
    letter = DeadLetter(TOPIC, 0, 1, b"x", "C" * 10_000, "m" * 100_000, key=b"k" * 50_000)
    entry = await reader_with(codec)._decode(record(codec.encode(letter)))
    summary = entry.summary()
    assert len(summary["error_message"]) == 2001 and len(summary["key"]) == 2001
    assert len(summary["error_code"]) == 2001
    assert base64.b64decode(entry.detail()["key_base64"]) == letter.key


def test_an_unreachable_broker_is_one_line_and_exit_2(monkeypatch, capsys):
    import socket

    from streaminfer.dlq import command

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("STREAMINFER_KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    for argv in (["dlq", "list"], ["dlq", "replay", "--dry-run"]):
        assert command(build_parser().parse_args(argv)) == 2
        err = capsys.readouterr().err
        assert f"streaminfer {' '.join(argv[:2])}: KafkaConnectionError" in err
        assert "Traceback" not in err
    assert command(build_parser().parse_args(["dlq", "show", "x:y"])) == 2
    assert "expected <partition>:<offset>" in capsys.readouterr().err


async def test_an_undecodable_payload_keyed_by_a_request_with_a_result_is_skipped(codec):
    redis = FakeRedis()
    redis.results.add(f"{PREFIX}:result:newer-schema-id")
    one = replayer(redis, FakeProducer())
    keyed = an_entry(codec, payload=b"\xc3\x01written with a newer schema", key=b"newer-schema-id")
    assert (await one.handle(keyed, EXISTING))["reason"] == "has-result"
    for key in (b"other-id", b"\xff\xfe", b"x" * 201, b"a\nb", None):
        entry = an_entry(codec, payload=b"junk " + (key or b"none"), key=key)
        assert (await one.handle(entry, EXISTING))["action"] == "replayed", key
