"""Tokens never reach a log: every line (uvicorn's access log included) has them replaced by `[redacted]`.

A token can show up as `?token=` / `?access_token=` in a logged URL (share links), after `Bearer `, or bare (every
token of this service starts with `ssah_`). `protect_logs()` puts the filter on every handler that exists when the
app starts (uvicorn has configured its own by then); `log_config()` is uvicorn's configuration with the filter on
its handlers from the first line, and the service's own loggers (`ssah.*`) shown at INFO.
"""
from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping

from backend.store.tokens import PREFIX

REDACTED = "[redacted]"
_PATTERNS = (
    re.compile(r"(?P<keep>(?:^|(?<=[?&;\s\"'/]))(?:access_)?token=)[^&#;\s\"']+", re.IGNORECASE),
    re.compile(r"(?P<keep>Bearer\s+)[^\s\"',;]+", re.IGNORECASE),
    re.compile(r"(?P<keep>)" + re.escape(PREFIX) + r"[A-Za-z0-9_\-%]{20,}"),
)


def redact(text: str) -> str:
    """`text` with every token in it replaced by [redacted]."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group("keep") + REDACTED, text)
    return text


def _redacted(value):
    return redact(value) if isinstance(value, str) else value


class RedactTokens(logging.Filter):
    """Redacts a record's message and its string arguments in place (uvicorn's access formatter reads the
    arguments one by one, so they stay a tuple of the same length)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _redacted(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {k: _redacted(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_redacted(a) for a in record.args)
        return True


def protect_logs() -> None:
    """Put the filter on every handler of the root logger, of every logger that has handlers of its own, and on
    logging's last-resort handler (idempotent)."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    handlers = {h for logger in loggers for h in getattr(logger, "handlers", ())}
    if logging.lastResort is not None:
        handlers.add(logging.lastResort)
    for handler in handlers:
        if not any(isinstance(f, RedactTokens) for f in handler.filters):
            handler.addFilter(RedactTokens())


def log_config(level: str = "info") -> dict:
    """uvicorn's logging configuration with every handler redacting tokens, and the service's loggers (`ssah.*`)
    on the default handler at `level`."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": RedactTokens}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "redact_tokens"]
    config["loggers"]["ssah"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config
