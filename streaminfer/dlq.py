"""``streaminfer dlq list|show|replay``: the dead-letter topic read up to its end offsets at
start (never waiting on an idle topic), one letter in full, and replay of original payloads to
their source topics, bounded per payload.

Errors::

    DlqError        what the command cannot do (no such letter, the topic does not progress)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

# NOTE: the parser is built for every `streaminfer` command: Kafka, Redis and the schemas (numpy)
# are imported where they are used, not here.
if TYPE_CHECKING:
    from streaminfer.schemas.records import DeadLetter, InferenceRequest

    from .settings import Settings

# NOTE: SPEC section 9 names it; only this tool writes it and nothing reads it back, so it lives
# here rather than among the headers worker and gateway share (schemas/keys.py).
HEADER_REPLAY_OF = "streaminfer-replay-of"
DEFAULT_MAX_REPLAYS = 3
# How long a payload's replay count is kept: a letter replayed this long ago may be replayed again.
REPLAY_COUNT_TTL_S = 30 * 24 * 3600
# aiokafka's default max_request_size; a payload that big cannot be produced by our producer.
MAX_PAYLOAD_BYTES = (1 << 20) - 4096
# Tansu answers a fetch only after the full fetch_max_wait_ms: keep it short.
FETCH_WAIT_MS = 50
# No record for this long while short of the end offsets: something is wrong, stop.
STALL_S = 30.0

# KEYS: the payload's replay count; ARGV: the bound, the TTL. -1 once the bound is reached.
_CLAIM_REPLAY = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then return -1 end
n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return n
"""


class DlqError(RuntimeError):
    retriable = False


def replay_count_key(prefix: str, payload_sha256: str) -> str:
    """Count of replays of one payload (by the SHA-256 of the whole original value)."""
    return f"{prefix}:dlq-replays:{payload_sha256}"


def parse_time(value: str) -> int:
    """An ISO-8601 time (``2026-12-01``, ``2026-12-01T15:00:00Z``, ``...+01:00``) in epoch ms;
    a time without an offset is UTC."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO-8601 time such as 2026-12-01T15:00:00Z, not {value!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True, slots=True)
class LetterFilter:
    """Which letters a command takes; ``None``/empty = any."""

    error_codes: frozenset[str] = frozenset()
    source_topic: str | None = None
    since_ms: int | None = None
    """Dead-lettered at or after (the letter's ``at``)."""
    until_ms: int | None = None
    """Dead-lettered before."""
    key: str | None = None

    @property
    def is_any(self) -> bool:
        return not (
            self.error_codes
            or self.source_topic
            or self.key is not None
            or self.since_ms is not None
            or self.until_ms is not None
        )

    def matches(self, letter: DeadLetter | None) -> bool:
        if letter is None:  # not a dead letter: only an unfiltered scan shows it
            return self.is_any
        return (
            (not self.error_codes or letter.error_code in self.error_codes)
            and (self.source_topic is None or letter.source_topic == self.source_topic)
            and (self.since_ms is None or letter.at >= self.since_ms)
            and (self.until_ms is None or letter.at < self.until_ms)
            and (self.key is None or letter.key == self.key.encode())
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LetterFilter:
        codes = frozenset(c.strip() for v in args.error_code or [] for c in v.split(","))
        return cls(codes - {""}, args.source_topic, args.since, args.until, args.key)


@dataclasses.dataclass(slots=True)
class Entry:
    """One record of the DLQ topic: a letter, or why it is not one."""

    topic: str
    partition: int
    offset: int
    letter: DeadLetter | None
    error: str | None = None
    request: InferenceRequest | None = None
    headers: tuple = ()

    @property
    def ref(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    def summary(self) -> dict[str, Any]:
        """What ``dlq list`` prints: never the payload itself."""
        out: dict[str, Any] = {
            "dlq": {"topic": self.topic, "partition": self.partition, "offset": self.offset}
        }
        letter = self.letter
        if letter is None:
            out["error"] = f"not a dead letter: {self.error}"
            return out
        out.update(
            {
                "error_code": _capped(letter.error_code),
                "error_message": _capped(letter.error_message),
                "source": {
                    "topic": letter.source_topic,
                    "partition": letter.partition,
                    "offset": letter.offset,
                },
                "request_id": self.request.request_id if self.request else None,
                "at": iso(letter.at) if 0 <= letter.at < 253402300800000 else letter.at,
                "key": (
                    None
                    if letter.key is None
                    else _capped(letter.key.decode("utf-8", "backslashreplace"))
                ),
                "payload_length": (
                    len(letter.payload) if letter.payload_length is None else letter.payload_length
                ),
                "truncated": letter.truncated,
            }
        )
        return out

    def detail(self) -> dict[str, Any]:
        """What ``dlq show`` prints: everything, the payload as base64."""
        out = self.summary()
        out["headers"] = {k: v.decode("utf-8", "backslashreplace") for k, v in self.headers}
        if self.letter is not None:
            out["payload_sha256"] = self.letter.payload_sha256
            key = self.letter.key
            out["key_base64"] = None if key is None else base64.b64encode(key).decode()
            out["payload_base64"] = base64.b64encode(self.letter.payload).decode()
            out["request"] = request_summary(self.request) if self.request else None
        return out


def _capped(text: str, most: int = 2000) -> str:
    """A hostile letter's text fields may be huge; a listing line stays readable."""
    return text if len(text) <= most else text[:most] + "…"


def request_summary(request: InferenceRequest) -> dict[str, Any]:
    return {
        "request_id": request.request_id,
        "task": request.task,
        "model_version": request.model_version,
        "priority": request.priority.name,
        "client_id": request.client_id,
        "created_at": request.created_at,
        "deadline_at": request.deadline_at,
        "inputs": [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in request.inputs
        ],
        "parameters": dict(request.parameters),
    }


def refusal(entry: Entry, prefix: str, existing_topics: set[str]) -> str | None:
    """Why ``entry`` must not be replayed, judged from the letter alone; None if it may be.
    A letter is data from the topic, not an instruction: it is replayed only to a request
    topic of this prefix that exists, with exactly the bytes it says it holds."""
    from streaminfer.schemas import topics

    letter = entry.letter
    if letter is None:
        return "not-a-dead-letter"
    target = topics.parse_request_topic(prefix, letter.source_topic)
    if target is None:
        return "not-a-request-topic"
    if letter.truncated:
        return "truncated"
    if (letter.payload_length is not None and letter.payload_length != len(letter.payload)) or (
        letter.payload_sha256 is not None
        and hashlib.sha256(letter.payload).hexdigest() != letter.payload_sha256.lower()
    ):
        return "payload-mismatch"
    if len(letter.payload) + len(letter.key or b"") > MAX_PAYLOAD_BYTES:
        return "oversized"
    if entry.request is not None and entry.request.task != target[0]:
        return "task-mismatch"  # the worker would refuse it again on that topic
    if letter.source_topic not in existing_topics:
        return "topic-missing"  # producing would auto-create it with the broker's defaults
    return None


class DlqReader:
    """A consumer of the DLQ topic with no group, reading from the beginning to the end offsets
    it finds at start; ``progress`` is told the total and each record read."""

    def __init__(self, settings: Settings, progress: Callable[[int], Any] | None = None) -> None:
        from streaminfer.schemas import topics

        self._settings = settings
        self._progress = progress
        self.topic = topics.dlq_topic(settings.topic_prefix)
        self.existing_topics: set[str] = set()
        self.total = 0

    async def __aenter__(self) -> DlqReader:
        from aiokafka import AIOKafkaConsumer

        from .connectivity import avro_codec, kafka_options

        self._codec = avro_codec(self._settings)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=FETCH_WAIT_MS,
            auto_offset_reset="earliest",
            **kafka_options(self._settings),
        )
        try:
            await self._consumer.start()
            self.existing_topics = set(await self._consumer.topics())
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._consumer.stop()
        self._codec.close()

    async def _partitions(self, only: int | None = None) -> list:
        from aiokafka import TopicPartition

        if self.topic not in self.existing_topics:
            return []
        found = self._consumer.partitions_for_topic(self.topic) or set()
        return [TopicPartition(self.topic, p) for p in sorted(found) if only is None or p == only]

    async def entries(
        self, partition: int | None = None, start: int | None = None, stop: int | None = None
    ) -> AsyncIterator[Entry]:
        """Every record up to the end offsets at start (of ``partition`` only, from ``start``,
        before ``stop``), decoded."""
        tps = await self._partitions(partition)
        if not tps:
            return
        consumer = self._consumer
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        for tp in tps:
            if stop is not None:
                ends[tp] = min(ends[tp], stop)
            # NOTE: an explicit seek, not seek_to_beginning(): that is one more offset reset,
            # racing the one assign() started, and the last to finish wins (seen here: the
            # position jumped to the end, records unread).
            begins[tp] = max(begins[tp], start or 0)
            consumer.seek(tp, begins[tp])
        pending = {tp for tp in tps if begins[tp] < ends[tp]}
        self.total = sum(max(0, ends[tp] - begins[tp]) for tp in pending)
        if self._progress:
            self._progress(0)
        loop = asyncio.get_running_loop()
        last = loop.time()
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    last = loop.time()
                    yield await self._decode(record)
                    if self._progress:
                        self._progress(1)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
            if pending and loop.time() - last > STALL_S:
                raise DlqError(f"{self.topic}: no record for {STALL_S:.0f}s before the end offsets")

    async def _decode(self, record) -> Entry:
        from streaminfer.schemas.errors import SchemaError
        from streaminfer.schemas.records import DeadLetter, InferenceRequest

        entry = Entry(
            record.topic, record.partition, record.offset, None, headers=tuple(record.headers or ())
        )
        if record.value is None:
            entry.error = "no value (a tombstone)"
            return entry
        try:
            entry.letter = await self._codec.decode_async(record.value, DeadLetter)
        except SchemaError as exc:
            if exc.retriable:  # the registry is away: not a statement about the record
                raise
            entry.error = str(exc)[:500]
            return entry
        try:
            entry.request = await self._codec.decode_async(entry.letter.payload, InferenceRequest)
        except SchemaError:
            entry.request = None  # the reason it was dead-lettered, often
        return entry


def parse_ref(ref: str, dlq_topic: str) -> tuple[int, int]:
    """``<partition>:<offset>`` or ``<dlq topic>:<partition>:<offset>`` (no topic has a colon)."""
    parts = ref.strip().rsplit(":", 2)
    if len(parts) == 3:
        if parts[0] != dlq_topic:
            raise DlqError(
                f"{parts[0]!r} is not the dead-letter topic of this prefix "
                f"({dlq_topic}; set STREAMINFER_TOPIC_PREFIX)"
            )
        parts = parts[1:]
    wrong = DlqError(f"expected <partition>:<offset> or <topic>:<partition>:<offset>, not {ref!r}")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise wrong
    return int(parts[0]), int(parts[1])


async def list_letters(
    settings: Settings, where: LetterFilter, limit: int | None = None, out=sys.stdout
) -> int:
    async with DlqReader(settings) as reader, contextlib.aclosing(reader.entries()) as entries:
        shown = 0
        async for entry in entries:
            if limit is not None and shown >= limit:
                break
            if where.matches(entry.letter):
                print(json.dumps(entry.summary()), file=out, flush=True)
                shown += 1
    return 0


async def show_letter(settings: Settings, ref: str, out=sys.stdout) -> int:
    reader = DlqReader(settings)
    partition, offset = parse_ref(ref, reader.topic)
    async with reader:
        async with contextlib.aclosing(reader.entries(partition, offset, offset + 1)) as entries:
            async for entry in entries:
                if entry.offset == offset:
                    print(json.dumps(entry.detail(), indent=2), file=out)
                    return 0
    raise DlqError(f"no record at {reader.topic}:{partition}:{offset}")


def _key_as_id(key: bytes | None) -> str | None:
    """The request id an undecodable payload's key stands for (Kafka-direct producers key
    requests by it): once a newer worker decodes the payload, its result is under that id."""
    try:
        text = key.decode() if key else ""
    except UnicodeDecodeError:
        return None
    return text if 0 < len(text) <= 200 and text.isprintable() else None


class Replayer:
    """Decides, letter by letter, whether to replay it, and does (unless ``dry_run``).

    The bound: a Redis counter per payload SHA-256, at most ``max_replays``. Counting
    ``streaminfer-replay-of`` headers cannot do it: a dead letter keeps the payload but not the
    event's headers, so an event replayed and dead-lettered again comes back as a fresh letter
    with no trace of the replay; only its bytes link the two. Within one run a payload goes
    once (after a crash the same event can be dead-lettered twice)."""

    def __init__(
        self,
        settings: Settings,
        redis,
        producer,
        *,
        dry_run: bool = False,
        max_replays: int = DEFAULT_MAX_REPLAYS,
    ) -> None:
        self._prefix = settings.topic_prefix
        self._redis = redis
        self._producer = producer
        self._dry_run = dry_run
        self._max_replays = max_replays
        self._claim = redis.register_script(_CLAIM_REPLAY)
        self._seen: set[str] = set()
        self.replayed = 0
        self.skipped: Counter = Counter()

    async def why_not(self, entry: Entry, existing_topics: set[str]) -> str | None:
        """Why ``entry`` is skipped; None: it is replayed (and counted against the bound)."""
        from streaminfer.schemas import keys

        reason = refusal(entry, self._prefix, existing_topics)
        if reason is not None:
            return reason
        digest = hashlib.sha256(entry.letter.payload).hexdigest()
        if digest in self._seen:
            return "duplicate-payload"
        rid = entry.request.request_id if entry.request else _key_as_id(entry.letter.key)
        if rid and await self._redis.exists(keys.result_key(self._prefix, rid)):
            return "has-result"  # any status: the worker answers a second one as a DUPLICATE
        count_key = replay_count_key(self._prefix, digest)
        if self._dry_run:
            if int(await self._redis.get(count_key) or 0) >= self._max_replays:
                return "replay-limit"
        elif await self._claim(keys=[count_key], args=[self._max_replays, REPLAY_COUNT_TTL_S]) < 0:
            return "replay-limit"
        self._seen.add(digest)
        return None

    async def handle(self, entry: Entry, existing_topics: set[str]) -> dict[str, Any]:
        """Skip or replay ``entry``; the JSON line that says which."""
        reason = await self.why_not(entry, existing_topics)
        line = entry.summary()
        if reason is not None:
            self.skipped[reason] += 1
            return {"action": "skipped", "reason": reason, **line}
        if not self._dry_run:
            letter = entry.letter
            try:
                await self._producer.send_and_wait(
                    letter.source_topic,
                    letter.payload,
                    key=letter.key,
                    headers=[(HEADER_REPLAY_OF, entry.ref.encode())],
                )
            except Exception:  # the producer said it failed: not replayed, the claim goes back
                digest = hashlib.sha256(letter.payload).hexdigest()
                await self._redis.decr(replay_count_key(self._prefix, digest))
                raise
            # NOTE: cancelled (Ctrl-C, a timeout around the run) the claim is kept: the record
            # may be in the producer's buffer and still go out as it stops, and giving the claim
            # back could let one more replay than the bound through
        self.replayed += 1
        return {"action": "would-replay" if self._dry_run else "replayed", **line}


async def replay_letters(
    settings: Settings,
    where: LetterFilter,
    *,
    limit: int | None = None,
    dry_run: bool = False,
    max_replays: int = DEFAULT_MAX_REPLAYS,
    out=sys.stdout,
    err=sys.stderr,
) -> Replayer:
    """Re-produce the original payload of each matching letter to its source topic, one JSON
    line per letter; ends ``out`` with ``replayed N, skipped M`` (the reasons on ``err``)."""
    from aiokafka import AIOKafkaProducer
    from redis.asyncio import Redis
    from tqdm import tqdm

    from .connectivity import kafka_options

    bars: list = []

    def progress(step: int) -> None:  # the first call, once the total is known, opens the bar
        if not bars:
            bars.append(
                tqdm(
                    total=reader.total,
                    file=err,
                    unit="letter",
                    mininterval=0.5,
                    desc="dry run" if dry_run else "replaying",
                )
            )
        bars[0].update(step)

    redis = Redis.from_url(settings.redis_dsn)
    producer = None
    try:
        if not dry_run:
            producer = AIOKafkaProducer(
                bootstrap_servers=settings.kafka_bootstrap_servers, **kafka_options(settings)
            )
            await producer.start()
        replayer = Replayer(settings, redis, producer, dry_run=dry_run, max_replays=max_replays)
        reader = DlqReader(settings, progress)
        async with reader:
            taken = 0
            async with contextlib.aclosing(reader.entries()) as entries:
                async for entry in entries:
                    if limit is not None and taken >= limit:
                        break
                    if where.matches(entry.letter):
                        taken += 1
                        line = await replayer.handle(entry, reader.existing_topics)
                        print(json.dumps(line), file=out, flush=True)
    finally:
        for bar in bars:
            bar.close()
        if producer is not None:
            await producer.stop()
        await redis.aclose()
    skipped = replayer.skipped
    if skipped:
        print("skipped: " + ", ".join(f"{n} {why}" for why, n in skipped.most_common()), file=err)
    if dry_run:  # what the last line says happened did happen: nothing
        print(f"dry run: {replayer.replayed} would be replayed, nothing was produced", file=err)
    print(
        f"replayed {0 if dry_run else replayer.replayed}, skipped {sum(skipped.values())}",
        file=out,
        flush=True,
    )
    return replayer


def _count(value: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {value!r}")
    return int(value)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``dlq`` subcommand of ``streaminfer`` and its actions."""
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--error-code", action="append", help="only these codes (repeat, or a,b)")
    filters.add_argument("--source-topic", help="only letters from this topic")
    filters.add_argument(
        "--since",
        type=parse_time,
        help="dead-lettered at or after this ISO-8601 time (UTC if no offset)",
    )
    filters.add_argument("--until", type=parse_time, help="dead-lettered before this ISO-8601 time")
    filters.add_argument("--key", help="only letters with this key (a Kafka-direct request's id)")
    filters.add_argument("--limit", type=_count, default=None, help="at most this many letters")
    dlq = sub.add_parser("dlq", help="list, show or replay dead letters")
    actions = dlq.add_subparsers(dest="dlq_action", required=True)
    actions.add_parser("list", parents=[filters], help="one JSON line per letter (no payloads)")
    show = actions.add_parser("show", help="one dead letter in full, payload as base64")
    show.add_argument("ref", help="<partition>:<offset> or <dlq topic>:<partition>:<offset>")
    replay = actions.add_parser(
        "replay", parents=[filters], help="re-produce original payloads to their source topics"
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="print what would be replayed; change nothing"
    )
    replay.add_argument(
        "--max-replays",
        type=_count,
        default=DEFAULT_MAX_REPLAYS,
        help=f"replays of one payload, ever (default {DEFAULT_MAX_REPLAYS})",
    )
    dlq.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """``streaminfer dlq ...``: 2, with one line on stderr, when Kafka, Redis or the letter
    is not there."""
    from aiokafka.errors import KafkaError
    from redis.exceptions import RedisError

    from streaminfer.schemas.errors import SchemaError

    from .connectivity import ConnectivityError, diagnose_kafka_tls
    from .settings import Settings

    settings = Settings()
    try:
        asyncio.run(diagnose_kafka_tls(settings))
        return asyncio.run(_run(args, settings))
    except (ConnectivityError, DlqError, KafkaError, RedisError, SchemaError) as exc:
        print(f"streaminfer dlq {args.dlq_action}: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.dlq_action == "show":
        return await show_letter(settings, args.ref)
    where = LetterFilter.from_args(args)
    if args.dlq_action == "list":
        return await list_letters(settings, where, args.limit)
    await replay_letters(
        settings, where, limit=args.limit, dry_run=args.dry_run, max_replays=args.max_replays
    )
    return 0
