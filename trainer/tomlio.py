"""TOML in and out with a spec-compliant reader and writer (tomllib/tomli, tomli-w): every string —
Windows paths, `\"\"\"`, control characters, any Unicode — reads back exactly as it was written. (The old
`toml` package wrote backslashes and triple quotes that it, or the reader, then got wrong.)
Standard library + tomli/tomli-w only, so the GUI uses it too."""
from __future__ import annotations

from typing import Any

try:  # Python 3.11+
    import tomllib as _reader
except ModuleNotFoundError:  # pragma: no cover — Python 3.10
    import tomli as _reader  # type: ignore[no-redef]

TOMLDecodeError = _reader.TOMLDecodeError


def loads(text: str) -> dict[str, Any]:
    return _reader.loads(text)


def dumps(data: dict[str, Any]) -> str:
    """TOML has no null: keys whose value is None are left out (at every depth), which a reader that
    fills defaults for missing keys reads back as None."""
    import tomli_w

    return tomli_w.dumps(_without_none(data))


def _without_none(value):
    if isinstance(value, dict):
        return {str(k): _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_without_none(v) for v in value]
    return value
