"""Running the CLI in either mode: directly (the store and broker from the settings), or in API mode against a
server on a real port with a token of a given role — and then with MongoDB and RabbitMQ addresses that reach
nothing, so that a command that worked went through the API."""

import asyncio
from dataclasses import dataclass

from click.testing import CliRunner, Result

from hookpost.cli.base import reset_settings
from hookpost.cli.main import cli
from hookpost.common.settings import Settings
from tests.api.conftest import Api
from tests.e2e.test_cli import env_for

# an operator's laptop in API mode: no store, no broker
UNREACHABLE = {"HOOKPOST_MONGODB_URL": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300",
               "HOOKPOST_RABBITMQ_URL": "amqp://nobody:nothing@127.0.0.1:9/%2F"}
API_VARS = ("HOOKPOST_API_URL", "HOOKPOST_API_TOKEN")


def invoke_env(args: list[str], env: dict[str, str | None], input: str | None = None) -> Result:
    """Run the CLI in this thread with ``env`` (None unsets a variable)."""
    reset_settings()
    return CliRunner().invoke(cli, args, env=env, input=input, catch_exceptions=False)


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
