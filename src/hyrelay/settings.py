"""Resolve relay settings from CLI flags, ``HYRELAY_*`` variables and a TOML file.

Precedence, highest first: flag, environment variable, TOML file, built-in default.
Everything here is pure except :func:`load_toml`, which reads the file it is given.

The TOML file holds settings as top-level keys, spelled with underscores or dashes::

    host = "0.0.0.0"
    port = 9001
    data_dir = "/var/lib/hyrelay"    # relative paths are relative to the TOML file
    max-listeners = 50
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .server.config import RelayConfig
from .store import InvalidName, validate_namespace_name

__all__ = [
    "ENV_PREFIX", "CONFIG_ENV", "DEFAULT_DATA_DIR", "LOG_LEVELS", "SETTINGS", "ConfigError",
    "Setting", "check_files", "default_of", "env_name", "load_toml", "resolve_config",
]

ENV_PREFIX = "HYRELAY_"
#: Environment variable naming the TOML file when ``--config`` is not given.
CONFIG_ENV = "HYRELAY_CONFIG"
DEFAULT_DATA_DIR = Path("hyrelay-data")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A setting has a bad value; the message names the setting and where it came from."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One configurable RelayConfig field."""

    name: str  #: RelayConfig field name, e.g. ``data_dir``
    convert: Callable[[object], Any]  #: raises ValueError with the reason
    help: str
    path: bool = False  #: relative TOML values are resolved against the TOML file's folder

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


# -- converters: accept the text of a flag or variable, or a typed TOML value ----------------


def _int(lo: int, hi: int | None = None) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError("must be an integer")
        try:
            number = int(value)
        except ValueError:
            raise ValueError("must be an integer") from None
        if number < lo or (hi is not None and number > hi):
            raise ValueError(f"must be between {lo} and {hi}" if hi is not None else f"must be at least {lo}")
        return number

    return convert


def _seconds(*, positive: bool) -> Callable[[object], float]:
    def convert(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("must be a number of seconds")
        try:
            number = float(value)
        except ValueError:
            raise ValueError("must be a number of seconds") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number of seconds")
        if positive and number <= 0:
            raise ValueError("must be greater than 0")
        if number < 0:
            raise ValueError("must not be negative")
        return number

    return convert


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _path(value: object) -> Path:
    return Path(os.path.expanduser(_text(value if not isinstance(value, Path) else str(value))))


def _log_level(value: object) -> str:
    level = _text(value).upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"use one of {', '.join(LOG_LEVELS)}")
    return level


def _public_url(value: object) -> str:
    url = _text(value)
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host, e.g. https://relay.example.com")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must have no path, query or fragment")
    return url.rstrip("/")


def _namespace(value: object) -> str:
    try:
        return validate_namespace_name(_text(value))
    except InvalidName as exc:
        raise ValueError(str(exc).split(": ", 1)[-1]) from None


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("host", _text, "Address to listen on."),
    Setting("port", _int(0, 65535), "Port to listen on (0 picks a free one)."),
    Setting("data_dir", _path, "Folder of the SQLite store.", path=True),
    Setting("public_url", _public_url, "URL clients use to reach the relay, if not host:port "
            "(e.g. behind a proxy)."),
    Setting("tls_cert", _path, "PEM certificate chain; serves wss:// and https://.", path=True),
    Setting("tls_key", _path, "PEM private key for --tls-cert.", path=True),
    Setting("max_listeners", _int(1), "Most listeners per hybrid connection."),
    Setting("log_level", _log_level, f"Log level: {', '.join(LOG_LEVELS)}."),
    Setting("namespace", _namespace, "Namespace the relay serves and commands act on."),
    Setting("token_grace", _seconds(positive=False), "Seconds a listener outlives its token's expiry."),
    Setting("clock_skew", _seconds(positive=False), "Seconds of clock skew tolerated on token expiry."),
    Setting("accept_timeout", _seconds(positive=True), "Seconds a sender waits for the listener to accept."),
    Setting("request_timeout", _seconds(positive=False),
            "Seconds a listener has to answer a relayed HTTP request (0: no limit)."),
    Setting("max_request_body", _int(1), "Largest relayed HTTP request body in bytes (default: no limit)."),
)}

_DEFAULTS: dict[str, object] = {"data_dir": DEFAULT_DATA_DIR}


def env_name(name: str) -> str:
    """The environment variable of a setting: ``data_dir`` -> ``HYRELAY_DATA_DIR``."""
    return ENV_PREFIX + name.upper()


def default_of(name: str) -> object:
    """The built-in default of a setting (as RelayConfig is built by resolve_config)."""
    if name in _DEFAULTS:
        return _DEFAULTS[name]
    return getattr(RelayConfig(), name)


def _toml_key(key: str) -> str:
    return key.strip().lower().replace("-", "_")


def load_toml(path: str | os.PathLike[str]) -> dict[str, object]:
    """Read a TOML settings file; keys are normalised and relative paths made absolute.

    Raises:
        ConfigError: the file is missing, not valid TOML, or holds an unknown key or a table.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    result: dict[str, object] = {}
    for key, value in raw.items():
        name = _toml_key(key)
        if name not in SETTINGS:
            known = ", ".join(sorted(SETTINGS))
            raise ConfigError(f"unknown key {key!r} in config file {str(path)!r}; known keys: {known}")
        if name in result:
            raise ConfigError(f"key {key!r} appears twice in config file {str(path)!r}")
        if SETTINGS[name].path and isinstance(value, str) and value.strip():
            full = Path(os.path.expanduser(value.strip()))
            value = str(full if full.is_absolute() else path.parent / full)
        result[name] = value
    return result


def _pick(name: str, flags: Mapping[str, object], env: Mapping[str, str],
          toml: Mapping[str, object]) -> tuple[object, str] | None:
    """The winning raw value of a setting and a label of where it came from."""
    setting = SETTINGS[name]
    if flags.get(name) is not None:
        return flags[name], setting.flag
    variable = env_name(name)
    if env.get(variable, "").strip():
        return env[variable], variable
    for key, value in toml.items():
        if _toml_key(key) == name:
            return value, f"config key {name!r}"
    return None


def resolve_config(flags: Mapping[str, object], env: Mapping[str, str],
                   toml: Mapping[str, object]) -> RelayConfig:
    """Build a RelayConfig: flag beats ``HYRELAY_*`` variable beats TOML key beats default.

    Args:
        flags: setting name -> value given on the command line; None means not given.
        env: the environment (``os.environ``); empty variables count as unset.
        toml: the file's settings, as :func:`load_toml` returns them.

    Raises:
        ConfigError: a value is malformed or settings contradict each other.
        TypeError: flags or toml hold a key that is not a setting (a programming error).
    """
    unknown = sorted(set(flags) - set(SETTINGS))
    if unknown:
        raise TypeError(f"not a setting: {', '.join(unknown)}")
    for key in toml:
        if _toml_key(key) not in SETTINGS:
            raise ConfigError(f"unknown config key {key!r}")
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for name, setting in SETTINGS.items():
        picked = _pick(name, flags, env, toml)
        if picked is None:
            values[name] = default_of(name)
            continue
        raw, source = picked
        try:
            values[name] = setting.convert(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid {name.replace('_', '-')} {raw!r} (from {source}): {exc}") from None
        sources[name] = source
    if values["tls_cert"] is not None and values["tls_key"] is None:
        raise ConfigError(f"tls-cert (from {sources['tls_cert']}) needs tls-key too: "
                          "give --tls-key or HYRELAY_TLS_KEY")
    if values["tls_key"] is not None and values["tls_cert"] is None:
        raise ConfigError(f"tls-key (from {sources['tls_key']}) needs tls-cert too: "
                          "give --tls-cert or HYRELAY_TLS_CERT")
    return RelayConfig(**values)  # type: ignore[arg-type]


def check_files(config: RelayConfig) -> None:
    """Check that the TLS files exist and are readable (the part of validation that needs I/O).

    Raises:
        ConfigError: a file is missing or unreadable.
    """
    for name in ("tls_cert", "tls_key"):
        path = getattr(config, name)
        if path is None:
            continue
        if not path.is_file():
            raise ConfigError(f"{name.replace('_', '-')} {str(path)!r} is not a file")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"{name.replace('_', '-')} {str(path)!r} is not readable")

