"""Why a Hub request failed, in one line: ``HubPushError`` (what ``push_to_hub`` / ``upload_dir`` raise),
``describe_hub_failure`` (no network, a timeout, offline mode, or the Hub's HTTP answer) for whatever
huggingface_hub version is installed (1.x talks httpx, 2.x httpx2, older ones requests: DESIGN.md
pitfalls 8 and 13), and ``quiet_hub_retries`` for command-line tools that report the outcome themselves."""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys


class HubPushError(OSError):
    """A push to the Hugging Face Hub failed: the Hub could not be reached (no network, DNS, proxy, a
    timeout, offline mode) or it refused (a missing or read-only token, no write access, a server error).
    The message is one line naming the repo and the cause; the original exception is ``__context__``."""


# Transport-level exception classes by the module that defines them: huggingface_hub >= 1.0 talks httpx,
# >= 2.0 httpx2 (whose errors are not httpx's), < 1.0 requests. Looked up in sys.modules only: a library
# that was never imported raised nothing.
_TRANSPORT_ERRORS = {
    "httpx": ("TransportError",),
    "httpx2": ("TransportError",),
    "requests.exceptions": ("ConnectionError", "Timeout"),
}


def hub_connection_errors() -> tuple[type[BaseException], ...]:
    """The exception classes meaning "the Hub could not be reached", for whatever version is installed."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]  # OfflineModeIsEnabled too
    for module, names in _TRANSPORT_ERRORS.items():
        mod = sys.modules.get(module)
        errors += [getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type)]
    return tuple(errors)


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def describe_hub_failure(e: BaseException) -> str | None:
    """One line on why a Hub request failed, or None when ``e`` is not a network or Hub answer error."""
    if isinstance(e, hub_connection_errors()):
        return f"could not reach the Hugging Face Hub ({type(e).__name__}: {_first_line(e)})"
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    if not isinstance(status, int) or not isinstance(e, OSError):  # HfHubHTTPError is an OSError
        return None
    reason = getattr(response, "reason_phrase", None) or getattr(response, "reason", None) or ""
    server = " ".join(str(getattr(e, "server_message", None) or "").split())
    what = f"the Hub answered HTTP {status} {reason}".rstrip() + f" ({server or _first_line(e)})"
    if status in (401, 403):
        what += "; log in with `hf auth login` or set HF_TOKEN to a token that may write to this repo"
    return what


@contextlib.contextmanager
def quiet_hub_retries():
    """Hold back huggingface_hub's warnings while it fetches (one per retry when the Hub cannot be
    reached: eleven lines before the error). For command-line tools, which report the outcome in one line."""
    with contextlib.suppress(ImportError):  # imported lazily, it sets its logger's level: before ours
        importlib.import_module("huggingface_hub.utils.logging")

    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)
