"""Which Hookpost a command talks to: directly (MongoDB and RabbitMQ from the settings) or a ``hookpost server``
over its HTTP API (API mode), and the named profiles of ``hookpost login``.

Which mode: ``--api URL`` or ``--profile NAME`` first, then ``HOOKPOST_API_URL``, else direct mode. The token:
``--token-file``, else the profile's token, else ``HOOKPOST_API_TOKEN``. Profiles live in
``$XDG_CONFIG_HOME/hookpost/profiles.toml`` (``~/.config/hookpost/profiles.toml``), written with mode 0600.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from hookpost.common.errors import ConfigError, InvalidInputError

# the commands that need MongoDB and RabbitMQ themselves: refused in API mode
DIRECT_ONLY = {"dispatcher", "janitor", "server", "topology", "demo"}
HELPING = "hookpost.helping"  # ctx.meta key: the command line asks for a subcommand's --help


@dataclass(frozen=True)
class Target:
    """Where commands go: ``api`` is None in direct mode. ``token`` is never printed (see :meth:`__repr__`)."""

    api: str | None = None
    token: str | None = None
    token_source: str = ""
    profile: str | None = None
    insecure: bool = False
    ca_file: str | None = None
    source: str = "default"

    @property
    def is_api(self) -> bool:
        """True in API mode."""
        return self.api is not None

    def __repr__(self) -> str:
        return f"Target(api={self.api!r}, profile={self.profile!r}, source={self.source!r})"


_current: dict[str, Target] = {}


def current() -> Target:
    """Return the target chosen by the command line and the environment (direct mode if none was chosen)."""
    return _current.get("t") or resolve()


def reset() -> None:
    """Forget the chosen target (tests run several command lines in one process)."""
    _current.clear()


def config_dir() -> Path:
    """Return Hookpost's config directory (``$XDG_CONFIG_HOME/hookpost``, else ``~/.config/hookpost``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hookpost"


def profiles_path() -> Path:
    """Return the path of the profiles file."""
    return config_dir() / "profiles.toml"


def read_profiles(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Return the profiles by name (empty if there is no file); a malformed file is a :class:`ConfigError`."""
    path = path or profiles_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise ConfigError(f"{path}: expected [profiles.NAME] tables")
    return profiles


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped) + '"'


def write_profiles(profiles: dict[str, dict[str, Any]], path: Path | None = None) -> Path:
    """Write ``profiles`` to the profiles file, readable by its owner only (0600; the directory 0700)."""
    path = path or profiles_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = ["# hookpost API profiles (hookpost login); holds tokens: keep it private", ""]
    for name in sorted(profiles):
        lines.append(f"[profiles.{_toml_value(name)}]")
        for key, value in profiles[name].items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write("\n".join(lines))
    os.replace(tmp, path)
    return path


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` is this machine (``localhost`` or a loopback address)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, insecure: bool) -> str:
    """Return the API base URL without a trailing slash; refuse one that would send a token in the clear."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(f"--api must be an http:// or https:// URL, not {url!r}")
    if parts.scheme == "http" and not insecure and not is_loopback(parts.hostname):
        raise InvalidInputError(f"refusing to send a token over plain http to {parts.hostname}: use https, or "
                                "--insecure if you must")
    return url.strip().rstrip("/")


def read_token_file(path: str) -> str:
    """Return the token in the file ``path`` (surrounding whitespace removed)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read --token-file {path}: {exc.strerror or exc}") from None
    if not token:
        raise InvalidInputError(f"--token-file {path} is empty")
    return token


def resolve(api: str | None = None, profile: str | None = None, token_file: str | None = None,
            insecure: bool = False, ca_file: str | None = None) -> Target:
    """Choose the target from the global options and the environment (see the module's docstring)."""
    env = os.environ
    record: dict[str, Any] = {}
    if profile:
        profiles = read_profiles()
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none yet"
            raise InvalidInputError(f"no profile {profile!r} in {profiles_path()} (known: {known}); "
                                    f"add it with 'hookpost login --api URL --profile {profile}'")
        record = profiles[profile]
    if api:
        url, source = api, "--api"
    elif profile:
        url, source = str(record.get("api") or ""), f"profile {profile}"
        if not url:
            raise ConfigError(f"profile {profile!r} in {profiles_path()} has no api URL")
    elif env.get("HOOKPOST_API_URL"):
        url, source = env["HOOKPOST_API_URL"], "HOOKPOST_API_URL"
    else:
        return Target()
    insecure = insecure or bool(record.get("insecure"))
    ca_file = ca_file or record.get("ca_file") or None
    if token_file:
        token, token_source = read_token_file(token_file), f"--token-file {token_file}"
    elif record.get("token"):
        token, token_source = str(record["token"]), f"profile {profile}"
    elif env.get("HOOKPOST_API_TOKEN"):
        token, token_source = env["HOOKPOST_API_TOKEN"].strip(), "HOOKPOST_API_TOKEN"
    else:
        token, token_source = None, "none"
    if ca_file and not Path(ca_file).is_file():
        raise InvalidInputError(f"--ca-file {ca_file}: no such file")
    return Target(api=check_url(url, insecure), token=token, token_source=token_source, profile=profile,
                  insecure=insecure, ca_file=ca_file, source=source)


def api_options(fn: Any) -> Any:
    """Add the global options of API mode (``--api``, ``--profile``, ``--token-file``, ``--insecure``,
    ``--ca-file``) to the root command."""
    options = [
        click.option("--api", "api_url", metavar="URL", default=None,
                     help="Use a hookpost server's HTTP API (else HOOKPOST_API_URL; else MongoDB/RabbitMQ directly)."),
        click.option("--profile", metavar="NAME", default=None, help="Use a profile saved by 'hookpost login'."),
        click.option("--token-file", metavar="PATH", default=None,
                     help="Read the API token from this file (else the profile's, else HOOKPOST_API_TOKEN)."),
        click.option("--insecure", is_flag=True, default=False,
                     help="Allow sending the token over plain http to a host other than this machine."),
        click.option("--ca-file", metavar="PATH", default=None, help="Trust this CA (PEM) for the server's TLS."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def choose(ctx: click.Context, api_url: str | None, profile: str | None, token_file: str | None, insecure: bool,
           ca_file: str | None) -> None:
    """Resolve and remember the target for this command line; refuse direct-only commands in API mode."""
    if api_url is not None and profile is not None:
        raise click.UsageError("give --api or --profile, not both")
    if ctx.invoked_subcommand == "login":  # login makes a profile: it reads its own options
        _current["t"] = Target()
        return
    target = resolve(api_url, profile, token_file, insecure, ca_file)
    _current["t"] = target
    if not target.is_api and (token_file or insecure or ca_file):
        given = "--token-file" if token_file else "--insecure" if insecure else "--ca-file"
        raise click.UsageError(f"{given} is for API mode: give --api URL, --profile NAME or HOOKPOST_API_URL")
    helping = ctx.meta.get(HELPING, False)
    if target.is_api and ctx.invoked_subcommand in DIRECT_ONLY and not helping:
        raise refuse(f"'hookpost {ctx.invoked_subcommand}' needs direct access to MongoDB and RabbitMQ and does not "
                     f"run in API mode (API mode from {target.source}): run it where they are reachable, without "
                     "--api, --profile or HOOKPOST_API_URL")


def require_direct(command: str) -> None:
    """Refuse ``command`` in API mode with a one-line hint."""
    target = current()
    if target.is_api:
        raise refuse(f"'hookpost {command}' needs direct access to MongoDB and does not run in API mode (API mode "
                     f"from {target.source}): run it where MongoDB is reachable")


def refuse(message: str) -> click.exceptions.Exit:
    """Print why a command does not run in API mode; return the exit (2) to raise."""
    click.echo(f"hookpost: error: {message}", err=True)
    return click.exceptions.Exit(2)
