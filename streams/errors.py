"""Errors of the stream worker.

    StreamsError
    ├── RequestRejected        a decodable request the worker cannot serve (unknown task, bad tensors)
    ├── TransientFailure       retriable: the model or a dependency failed for now
    └── BatcherClosed          the batcher stopped while a request waited for room
"""


class StreamsError(Exception):
    retriable = False
    code = "WORKER_ERROR"


class RequestRejected(StreamsError):
    code = "REJECTED"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TransientFailure(StreamsError):
    retriable = True
    code = "TRANSIENT_FAILURE"


class BatcherClosed(StreamsError):
    code = "BATCHER_CLOSED"
