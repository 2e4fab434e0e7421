"""Errors of the stream worker.

StreamsError
└── BatcherClosed          the batcher stopped while a request waited for room
"""


class StreamsError(Exception):
    retriable = False
    code = "WORKER_ERROR"


class BatcherClosed(StreamsError):
    code = "BATCHER_CLOSED"
