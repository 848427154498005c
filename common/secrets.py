"""API keys come from the environment only, and never reach logs, caches, MLflow or YAML."""

from __future__ import annotations

import logging
import os
import re

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
_REGISTERED: set[str] = set()


class MissingSecretError(RuntimeError):
    pass


def api_key_from_env(var: str = DEFAULT_KEY_ENV, required: bool = False) -> str | None:
    """Read an API key from the environment variable `var` (never from argv or a config file).

    A local server (vLLM, transformers serve) needs no key; the openai client insists on one,
    so callers pass "EMPTY" when this returns None.
    """
    value = os.environ.get(var)
    if value:
        register_secret(value)
        return value
    if required:
        raise MissingSecretError(f"environment variable {var} is not set (the API key is read from it)")
    return None


def register_secret(value: str) -> None:
    if value and len(value) >= 4:
        _REGISTERED.add(value)


def redact(text: str) -> str:
    """Replace every registered secret and anything that looks like a bearer key with ***."""
    # Longest first: a registered secret that is a prefix of another (a key "sk-test" and a
    # key "sk-test-abc...") must not leave the longer one's tail in the text.
    for secret in sorted(_REGISTERED, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = re.sub(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}", r"\1***", text)
    text = re.sub(r"\bsk-[A-Za-z0-9_\-]{8,}", "sk-***", text)
    return text


class RedactingFilter(logging.Filter):
    """Logging filter that scrubs secrets from every record's rendered message."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    target = logger or logging.getLogger()
    if not any(isinstance(f, RedactingFilter) for f in target.filters):
        target.addFilter(RedactingFilter())
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
