"""Logging setup shared by every streaminfer process: JSON lines on stderr, one object per
record, carrying ``request_id``, ``task`` and friends when a caller passes them in ``extra``."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = (
                    value if isinstance(value, str | int | float | bool | None) else repr(value)
                )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def logging_config(level: str = "INFO", json_logs: bool = True) -> dict:
    """A ``logging.config.dictConfig`` dict (faust's worker takes one too)."""
    chatty = "INFO" if level.upper() == "DEBUG" else "WARNING"
    formatter = (
        {"()": JsonFormatter}
        if json_logs
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": sys.stderr,
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            # chatty at INFO; their warnings still come through
            "aiokafka": {"level": chatty},
            "faust": {"level": chatty},
            "mode": {"level": chatty},
            "uvicorn.access": {"level": "WARNING"},
        },
    }


def setup_logging(level: str = "INFO", json_logs: bool = True) -> None:
    import logging.config

    logging.config.dictConfig(logging_config(level, json_logs))
