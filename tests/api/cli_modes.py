"""Running the CLI in either mode: directly (the store and broker from the settings), or in API mode against a
server on a real port with a token of a given role — and then with MongoDB and RabbitMQ addresses that reach
nothing, so that a command that worked went through the API."""

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from hookpost.cli.base import reset_settings
from hookpost.cli.main import cli as hookpost_cli
from hookpost.common.settings import Settings
from tests.api.conftest import Api, make_api

# an operator's laptop in API mode: no store, no broker
UNREACHABLE = {"HOOKPOST_MONGODB_URL": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300",
               "HOOKPOST_RABBITMQ_URL": "amqp://nobody:nothing@127.0.0.1:9/%2F"}
API_VARS = ("HOOKPOST_API_URL", "HOOKPOST_API_TOKEN")


def invoke_env(args: list[str], env: dict[str, str | None], input: str | None = None) -> Result:
    """Run the CLI in this thread with ``env`` (None unsets a variable)."""
    reset_settings()
    return CliRunner().invoke(hookpost_cli, args, env=env, input=input, catch_exceptions=False)


@dataclass
class Cli:
    """The CLI in one mode: ``await cli("events", "list", role="viewer")``."""

    mode: str
    settings: Settings
    api: Api | None = None

    @property
    def is_api(self) -> bool:
        return self.mode == "api"

    def env(self, role: str = "viewer") -> dict[str, str | None]:
        from tests.e2e.test_cli import env_for  # (that module uses this one)

        env: dict[str, str | None] = {**env_for(self.settings), **dict.fromkeys(API_VARS)}
        if self.api is not None:
            env.update(UNREACHABLE, HOOKPOST_API_URL=self.api.server.url, HOOKPOST_API_TOKEN=self.api.tokens[role])
        return env

    def actor(self, role: str) -> str:
        """How the audit log names this caller."""
        import getpass

        return f"token:test-{role}" if self.is_api else f"cli:{getpass.getuser()}"

    async def __call__(self, *args: str, role: str = "viewer", input: str | None = None) -> Result:
        result = await asyncio.to_thread(invoke_env, list(args), self.env(role), input)
        if self.api is not None:
            assert self.api.tokens[role] not in result.output, "the token was printed"
        return result

    async def subprocess(self, *args: str, role: str = "viewer") -> tuple[int, str, str]:
        """Run the installed ``hookpost`` with this mode's environment; return (exit code, stdout, stderr)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}
        env.update({k: v for k, v in self.env(role).items() if v is not None})
        proc = await asyncio.create_subprocess_exec(Path(sys.executable).parent / "hookpost", *args, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        if self.api is not None:
            assert self.api.tokens[role] not in out.decode() + err.decode(), "the token was printed"
        return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture(params=["direct", "api"], name="cli")
async def cli_fixture(request, settings, store) -> AsyncIterator[Cli]:  # type: ignore[no-untyped-def]
    """The CLI directly, or in API mode through a server on a real port with a token per role."""
    if request.param == "direct":
        yield Cli("direct", settings)
        return
    async for api in make_api(settings):
        yield Cli("api", settings, api)
