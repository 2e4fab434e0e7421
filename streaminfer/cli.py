"""The ``streaminfer`` command: ``up``, ``gateway``, ``worker``, ``models build|list``, ``submit``,
``tail results|audit|dlq``, ``dlq list|show|replay``, ``bench`` and ``config show``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import uuid

from .settings import Settings


def _tasks_arg(value: str | None) -> list[str] | None:
    return [t.strip() for t in value.split(",") if t.strip()] if value else None


def _fractions_arg(value: str) -> tuple[float, ...]:
    fractions = tuple(float(v) for v in value.split(",") if v.strip())
    if not fractions or not all(0 < f <= 1.5 for f in fractions):
        raise argparse.ArgumentTypeError(
            f"expected fractions of saturation such as 0.25,0.5, not {value!r}"
        )
    return fractions


def cmd_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from streaminfer.gateway.app import AuthNotConfigured

    from .connectivity import ConnectivityError, uvicorn_ssl
    from .telemetry import logging_config, setup_logging

    settings = Settings()
    setup_logging(args.log_level)
    if args.workers < 1:
        print("streaminfer gateway: --workers must be 1 or more", file=sys.stderr)
        return 2
    try:
        app = gateway_app(settings)  # refuses a bad configuration here, before any process starts
    except AuthNotConfigured as exc:
        print(f"streaminfer gateway: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_ensure_topics(settings, settings.task_list))
    except ConnectivityError as exc:
        print(f"streaminfer gateway: {exc}", file=sys.stderr)
        return 2
    log_config = logging_config(args.log_level)
    served = app if args.workers == 1 else f"{__name__}:gateway_app"
    if args.workers > 1:
        # NOTE: with N workers uvicorn binds the socket here and spawns N processes that share it;
        # each imports this module and builds its own app (producer, Redis pool, lag monitor).
        # Its configuration is pickled to them: a stream by name, not the object.
        for handler in log_config["handlers"].values():
            if handler.get("stream") is sys.stderr:
                handler["stream"] = "ext://sys.stderr"
    uvicorn.run(
        served,
        factory=args.workers > 1,
        workers=args.workers if args.workers > 1 else None,
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_config=log_config,
        access_log=False,
        **uvicorn_ssl(settings),
    )
    return 0


def gateway_app(settings: Settings | None = None):
    """The gateway's ASGI app from ``settings`` (default: the environment's), with the Kafka and
    registry connectivity they name; uvicorn's app factory in each process of ``--workers N``."""
    from streaminfer.gateway.app import create_app

    from . import tracing
    from .connectivity import kafka_options, schema_registry

    settings = settings or Settings()
    provider = tracing.install(
        tracing.GATEWAY
    )  # in each process: with --workers N each builds its app
    app = create_app(
        settings, kafka_options=kafka_options(settings), registry=schema_registry(settings)
    )
    tracing.flush_on_shutdown(app, provider)
    return app


async def _ensure_topics(settings: Settings, tasks: list[str] | None) -> list[str]:
    from streaminfer.models.config import load_repository_configs

    from .kafka_admin import ensure_contract_topics

    configs = load_repository_configs(settings.model_repository)
    tasks = tasks or sorted(t for t, c in configs.items() if c.versions)
    await ensure_contract_topics(settings, tasks)
    return tasks


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from streaminfer.streams.app import WorkerOptions, create_worker

    from . import tracing
    from .connectivity import (
        ConnectivityError,
        faust_credentials,
        kafka_options,
        kafka_ssl_context,
        registry_client,
        registry_url,
    )
    from .telemetry import logging_config, setup_logging

    settings = Settings()
    setup_logging(args.log_level)
    tracing.install(tracing.WORKER)
    if settings.device == "cuda":
        from streaminfer.models.base import require_cuda

        require_cuda()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    chosen = _tasks_arg(args.tasks) or settings.task_list
    try:
        tasks = loop.run_until_complete(_ensure_topics(settings, chosen))
    except ConnectivityError as exc:
        print(f"streaminfer worker: {exc}", file=sys.stderr)
        return 2
    if not tasks:
        print(
            "streaminfer worker: no built models in the repository; run `streaminfer models build`",
            file=sys.stderr,
        )
        return 2
    ssl_context = kafka_ssl_context(settings)
    worker_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    app, runtime = create_worker(
        WorkerOptions(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            redis_url=settings.redis_dsn,
            topic_prefix=settings.topic_prefix,
            group_id=settings.group_id,
            model_repository=str(settings.model_repository),
            tasks=tasks,
            worker_id=worker_id,
            topic_partitions=settings.topic_partitions,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            fetch_max_wait_busy_ms=settings.kafka_fetch_max_wait_busy_ms,
            linger_ms=settings.kafka_linger_ms,
            commit_interval_s=settings.worker_commit_interval_s,
            result_ttl_s=settings.result_ttl_s,
            max_queued=settings.worker_queue_items,
            metrics_host=settings.worker_metrics_host,
            metrics_port=settings.worker_metrics_port,
            device=settings.device,
            threads=settings.worker_threads,
            model_poll_s=settings.worker_model_poll_s,
            circuit_failures=settings.circuit_failures,
            circuit_reset_s=settings.circuit_reset_s,
            schema_registry_url=registry_url(settings),
            registry_http=registry_client(settings),
            schema_registry_subject_strategy=settings.schema_registry_subject_strategy,
            kafka_options=kafka_options(settings, ssl_context),
            broker_credentials=faust_credentials(settings, ssl_context),
            cache_scope=settings.content_cache_scope,
            scheduling=settings.worker_scheduling,
            follow_repository=not chosen,  # no explicit list: tasks dropped into the repository are served too
            feature_store_url=settings.feature_store_url.get_secret_value()
            if settings.feature_store_url
            else None,
        ),
        ensure_topics=lambda new: _ensure_topics(settings, new),
    )
    worker = faust.Worker(
        app,
        runtime,
        loop=loop,
        loglevel=args.log_level.lower(),
        quiet=True,
        redirect_stdouts=False,
        logging_config=logging_config(args.log_level),
    )
    worker.execute_from_commandline()
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    settings = Settings()
    if args.action == "build":
        from streaminfer.models.builtin import build_all

        metrics = build_all(
            settings.model_repository, force=args.force, tasks=_tasks_arg(args.tasks)
        )
        for task, values in metrics.items():
            print(f"{task:<20} " + " ".join(f"{k}={v}" for k, v in values.items()))
        return 0
    from streaminfer.models.config import load_repository_configs

    configs = load_repository_configs(settings.model_repository)
    if not configs:
        print(f"no models in {settings.model_repository}; run `streaminfer models build`")
    for task, config in sorted(configs.items()):
        versions = ",".join(config.versions) or "(not built)"
        print(
            f"{task:<20} {config.name:<28} {config.backend:<12} versions {versions:<8} "
            f"max_batch {config.max_batch_size} delay {config.max_batch_delay_ms}ms"
        )
    return 0


SUBMIT_KEYS = ("inputs", "priority", "deadline_ms", "parameters", "model_version")
"""The fields of a ``/v1/infer`` body ``submit --json`` takes."""


def cmd_submit(args: argparse.Namespace) -> int:
    from streaminfer.client import Client, ClientError

    from .connectivity import gateway_url

    settings = Settings()
    url = args.url or gateway_url(settings)
    if args.json:
        body = json.loads(args.json)
    elif args.text:
        body = {"inputs": {"text": args.text if len(args.text) > 1 else args.text[0]}}
    elif args.entity_id:  # a feature lookup task: the worker fetches the entities' features
        body = {
            "inputs": {
                "entity_id": args.entity_id if len(args.entity_id) > 1 else args.entity_id[0]
            }
        }
    else:
        body = {"inputs": json.load(sys.stdin)}
    unknown = sorted(set(body) - set(SUBMIT_KEYS)) if isinstance(body, dict) else None
    if unknown is None or unknown or "inputs" not in body:
        print(
            f"streaminfer submit: the body must be an object with inputs and only {', '.join(SUBMIT_KEYS)}",
            file=sys.stderr,
        )
        return 2
    if args.priority:
        body["priority"] = args.priority
    collection = {
        "collection": args.collection,
        "item_id": args.item_id,
        "similar_k": args.similar_k,
    }
    if any(v is not None for v in collection.values()):  # the gateway checks that they go together
        body["parameters"] = {
            **(body.get("parameters") or {}),
            **{k: str(v) for k, v in collection.items() if v is not None},
        }
    try:
        with Client(url, api_key=args.api_key) as client:
            result = client.infer(
                args.task,
                body["inputs"],
                wait=args.wait,
                priority=body.get("priority"),
                deadline_ms=body.get("deadline_ms"),
                parameters=body.get("parameters"),
                model_version=body.get("model_version"),
            )
    except ClientError as exc:  # the gateway's error body, or the client's own for no answer
        error = (
            exc.body
            if isinstance(exc.body, dict)
            else {"error_code": exc.error_code, "message": exc.message}
        )
        print(json.dumps(error, indent=2))
        return 1
    print(json.dumps(result.raw, indent=2))
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from .connectivity import ConnectivityError, diagnose_kafka_tls
    from .tail import tail

    settings = Settings()
    try:
        asyncio.run(diagnose_kafka_tls(settings))
    except ConnectivityError as exc:
        print(f"streaminfer tail: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(
        tail(
            settings,
            args.stream,
            task=args.task,
            request_id=args.request_id,
            from_beginning=args.from_beginning,
            max_messages=args.max,
            idle_timeout_s=args.idle_timeout,
        )
    )


def cmd_up(args: argparse.Namespace) -> int:
    from .up import run_up

    return run_up(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


def cmd_topics(args: argparse.Namespace) -> int:
    from .connectivity import ConnectivityError

    settings = Settings()
    try:
        tasks = asyncio.run(_ensure_topics(settings, _tasks_arg(args.tasks)))
    except ConnectivityError as exc:
        print(f"streaminfer topics: {exc}", file=sys.stderr)
        return 2
    print(
        f"topics of {', '.join(tasks)} exist under prefix {settings.topic_prefix!r} "
        f"({settings.topic_partitions} partitions each when created)"
    )
    return 0


async def _with_key_store(settings: Settings, action):
    from redis.asyncio import Redis

    from streaminfer.gateway.apikeys import ApiKeyStore

    redis = Redis.from_url(settings.redis_dsn)
    try:
        return await action(ApiKeyStore(redis, settings.topic_prefix))
    finally:
        await redis.aclose()


def cmd_keys(args: argparse.Namespace) -> int:
    settings = Settings()
    if args.action == "create":
        if not args.client:
            print("streaminfer keys create: --client is required", file=sys.stderr)
            return 2
        scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
        if args.if_absent and any(
            row["client"] == args.client
            for row in asyncio.run(_with_key_store(settings, lambda store: store.list()))
        ):
            print(f"{args.client} has an API key already; none created")
            return 0
        try:
            key = asyncio.run(
                _with_key_store(
                    settings, lambda store: store.create(args.client, scopes, args.admin)
                )
            )
        except ValueError as exc:
            print(f"streaminfer keys create: {exc}", file=sys.stderr)
            return 2
        print(f"API key for {args.client} (shown once; stored only hashed):")
        print(key)
    elif args.action == "list":
        for row in asyncio.run(_with_key_store(settings, lambda store: store.list())):
            print(
                f"{row['client']:<24} scopes={row['scopes']:<34} admin={'yes' if row['admin'] else 'no':<4} "
                f"keys={row['keys']}"
            )
    else:
        if not args.client:
            print("streaminfer keys revoke: --client is required", file=sys.stderr)
            return 2
        revoked = asyncio.run(_with_key_store(settings, lambda store: store.revoke(args.client)))
        print(f"revoked {revoked} key(s) of {args.client}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(json.dumps(Settings().summary(), indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streaminfer", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("STREAMINFER_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start broker, Redis, a worker and the gateway on loopback")
    up.add_argument("--gateway-port", type=int, default=None)
    up.add_argument("--kafka-port", type=int, default=9092)
    up.add_argument("--redis-port", type=int, default=6379)
    up.add_argument("--tasks", default=None, help="comma-separated tasks (default: all built)")
    up.add_argument("--workers", type=int, default=1)
    up.set_defaults(func=cmd_up)

    gateway = sub.add_parser("gateway", help="run the HTTP gateway")
    gateway.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes serving the same port (each its own producer and Redis pool)",
    )
    gateway.set_defaults(func=cmd_gateway)

    worker = sub.add_parser("worker", help="run a stream worker")
    worker.add_argument("--tasks", default=None)
    worker.add_argument("--worker-id", default=None)
    worker.set_defaults(func=cmd_worker)

    models = sub.add_parser("models", help="build or list the model repository")
    models.add_argument("action", choices=["build", "list"])
    models.add_argument("--force", action="store_true")
    models.add_argument("--tasks", default=None)
    models.set_defaults(func=cmd_models)

    submit = sub.add_parser("submit", help="submit one request through the gateway")
    submit.add_argument("task")
    submit.add_argument("--text", nargs="+", help="text(s) for text-embedding")
    submit.add_argument(
        "--entity-id",
        nargs="+",
        help="entity id(s) whose features the worker looks up "
        "(tasks with a features section, e.g. tabular-classify: 0 ... 568)",
    )
    submit.add_argument("--json", help="the whole body as JSON")
    submit.add_argument("--priority")
    submit.add_argument(
        "--collection",
        help="a collection to store the embedding in (with --item-id) or "
        "to find its neighbours in (with --similar-k)",
    )
    submit.add_argument("--item-id", help="store the embedding under this id in --collection")
    submit.add_argument(
        "--similar-k", type=int, help="add the k nearest items of --collection to the result"
    )
    submit.add_argument("--wait", type=float, default=10.0)
    submit.add_argument("--url")
    submit.add_argument("--api-key", default=os.environ.get("STREAMINFER_API_KEY"))
    submit.set_defaults(func=cmd_submit)

    tail = sub.add_parser("tail", help="print results, audit events or dead letters as JSON lines")
    tail.add_argument("stream", choices=["results", "audit", "dlq"])
    tail.add_argument("--task")
    tail.add_argument("--request-id")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--max", type=int, default=None)
    tail.add_argument(
        "--idle-timeout", type=float, default=None, help="stop after this many idle seconds"
    )
    tail.set_defaults(func=cmd_tail)

    from .dlq import add_parser as add_dlq_parser  # `dlq list|show|replay`, run by streaminfer.dlq

    add_dlq_parser(sub)

    from .features import add_parser as add_features_parser  # `features load`

    add_features_parser(sub)

    bench = sub.add_parser("bench", help="measure throughput and latency")
    bench.add_argument("--requests", type=int, default=2000)
    bench.add_argument("--concurrency", type=int, default=256)
    bench.add_argument("--batch-size", type=int, default=None)
    bench.add_argument("--output", default="bench-results")
    bench.add_argument(
        "--scenario",
        choices=[
            "codec",
            "batching",
            "priority",
            "http",
            "gateway",
            "load",
            "scaleout",
            "deadlines",
            "light",
            "collections",
            "all",
        ],
        default="all",
        help="all: every scenario in turn (about 15 minutes on 2 cores) but "
        "collections (the vector index alone, in-process)",
    )
    bench.add_argument(
        "--collection-sizes",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[10_000, 100_000],
        help="collections: comma-separated numbers of vectors",
    )
    bench.add_argument(
        "--collection-kinds",
        type=lambda v: v.split(","),
        default=["random", "clustered"],
        help="collections: random and/or clustered 384-d vectors",
    )
    bench.add_argument(
        "--rates",
        type=_fractions_arg,
        default=(0.25, 0.5, 0.75, 0.85, 0.9),
        help="load: comma-separated fractions of the saturation throughput to offer",
    )
    bench.add_argument(
        "--duration",
        type=float,
        default=None,
        help="load: seconds of each open-loop run (default: --requests requests each)",
    )
    bench.add_argument(
        "--deadlines-seconds",
        type=float,
        default=20.0,
        help="deadlines: seconds of each open-loop run at 1.5x saturation",
    )
    bench.add_argument(
        "--tight-share",
        type=float,
        default=0.5,
        help="deadlines: share of requests with the tight deadline (the rest: loose, 2 s)",
    )
    bench.add_argument(
        "--light-seconds",
        type=float,
        default=20.0,
        help="light: seconds of the open-loop run at 5%% of saturation",
    )
    bench.add_argument(
        "--floor-seconds",
        type=float,
        default=10.0,
        help="deadlines, light: seconds of the no-model transport-floor run (20 req/s)",
    )
    bench.add_argument(
        "--submit-seconds", type=float, default=10.0, help="length of the gateway submit run"
    )
    bench.add_argument(
        "--submit-connections",
        type=int,
        default=64,
        help="keep-alive connections of the gateway submit run",
    )
    bench.set_defaults(func=cmd_bench)

    topics_cmd = sub.add_parser("topics", help="create the request, result, audit and DLQ topics")
    topics_cmd.add_argument("action", choices=["create"])
    topics_cmd.add_argument("--tasks", default=None)
    topics_cmd.set_defaults(func=cmd_topics)

    keys_cmd = sub.add_parser(
        "keys", help="create, list or revoke API keys (stored hashed in Redis)"
    )
    keys_cmd.add_argument("action", choices=["create", "list", "revoke"])
    keys_cmd.add_argument("--client")
    keys_cmd.add_argument("--scopes", default="inference:submit,inference:read")
    keys_cmd.add_argument("--admin", action="store_true")
    keys_cmd.add_argument(
        "--if-absent",
        action="store_true",
        help="create: only if the client has no key yet (an init step run on every start)",
    )
    keys_cmd.set_defaults(func=cmd_keys)

    config = sub.add_parser("config", help="show the effective settings")
    config.add_argument("action", choices=["show"])
    config.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> None:
    from pydantic import ValidationError

    from streaminfer.models.errors import ModelError

    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except ValidationError as exc:  # settings that cannot work: one line each, naming the setting
        for error in exc.errors():
            where = (
                "STREAMINFER_" + "_".join(str(p) for p in error["loc"]).upper()
                if error["loc"]
                else ""
            )
            message = error["msg"].removeprefix("Value error, ")
            print(
                f"streaminfer {args.command}: {where + ': ' if where else ''}{message}",
                file=sys.stderr,
            )
        code = 2
    except ModelError as exc:  # a missing extra or weights package, a GPU that is not there
        print(f"streaminfer {args.command}: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)
