"""The ``hookpost`` entry point: one group with every command.

Shell completion (bash): ``eval "$(_HOOKPOST_COMPLETE=bash_source hookpost)"`` (zsh: ``zsh_source``,
fish: ``fish_source``).
"""

import importlib

import click

from hookpost.cli.base import HookpostGroup
from hookpost.cli.target import HELPING, api_options, choose

# command name → "module:attribute"; modules load on first use, so `hookpost events list` does not import
# aiohttp, pika or the dispatcher (start-up time is most of a short command's run time)
COMMANDS = {
    "webhooks": "hookpost.cli.webhooks:webhooks",
    "events": "hookpost.cli.events:events",
    "event-types": "hookpost.cli.event_types:event_types",
    "invalid": "hookpost.cli.invalid:invalid",
    "failed": "hookpost.cli.invalid:failed",
    "publish": "hookpost.cli.system:publish",
    "topology": "hookpost.cli.system:topology",
    "config": "hookpost.cli.system:config",
    "dispatcher": "hookpost.cli.system:dispatcher",
    "janitor": "hookpost.cli.system:janitor",
    "demo": "hookpost.cli.demo:demo",
    "demo-receiver": "hookpost.cli.demo:demo_receiver",
    "tokens": "hookpost.cli.access:tokens",
    "audit": "hookpost.cli.access:audit",
    "server": "hookpost.cli.server:server",
    "login": "hookpost.cli.login:login",
}


class LazyGroup(HookpostGroup):
    """A :class:`HookpostGroup` whose subcommands are imported when first used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Return every command name, sorted."""
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import and return the command ``cmd_name`` (None if there is no such command)."""
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                            list[str]]:
        """Resolve the subcommand; note whether its --help is asked for (API mode refuses direct-only commands,
        but still shows their help)."""
        ctx.meta[HELPING] = any(a in ("-h", "--help") for a in args[1:])
        return super().resolve_command(ctx, args)

    @property
    def commands(self) -> dict[str, click.Command]:  # type: ignore[override]
        """Every command, imported (for tools that walk the tree, like the tests)."""
        return {name: cmd for name in COMMANDS if (cmd := self.get_command(click.Context(self), name))}

    @commands.setter
    def commands(self, value: dict[str, click.Command]) -> None:
        pass


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="hookpost", prog_name="hookpost")
@api_options
@click.pass_context
def cli(ctx: click.Context, api_url: str | None, profile: str | None, token_file: str | None, insecure: bool,
        ca_file: str | None) -> None:
    """Hookpost: webhook delivery from RabbitMQ change events, recorded in MongoDB.

    Settings come from HOOKPOST_* environment variables; 'hookpost config' shows them. With --api URL,
    --profile NAME or HOOKPOST_API_URL, commands go through a hookpost server's HTTP API instead (token from
    HOOKPOST_API_TOKEN, --token-file or the profile; see 'hookpost login').

    \b
    Examples:
      hookpost webhooks create --url https://example.com/hooks --event 'article.*'
      hookpost publish article.updated --entity-kind article --entity-id A-1001
      hookpost events list --status failed --since 24h
      hookpost --profile prod events restart --status failed --since 1h
    """
    choose(ctx, api_url, profile, token_file, insecure, ca_file)



def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="hookpost")


if __name__ == "__main__":
    main()
