"""The ``hookpost`` entry point: one group with every command.

Shell completion (bash): ``eval "$(_HOOKPOST_COMPLETE=bash_source hookpost)"`` (zsh: ``zsh_source``,
fish: ``fish_source``).
"""

import click

from cli.base import HookpostGroup
from cli.demo import demo, demo_receiver
from cli.events import events
from cli.system import config, dispatcher, janitor, publish, topology
from cli.webhooks import webhooks


@click.group(cls=HookpostGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="hookpost", prog_name="hookpost")
def cli() -> None:
    """Hookpost: webhook delivery from RabbitMQ change events, recorded in MongoDB.

    Settings come from HOOKPOST_* environment variables; 'hookpost config' shows them.

    \b
    Examples:
      hookpost webhooks create --url https://example.com/hooks --event 'article.*'
      hookpost publish article.updated --entity-kind article --entity-id A-1001
      hookpost events list --status failed --since 24h
    """


for command in (webhooks, events, publish, topology, config, dispatcher, janitor, demo, demo_receiver):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="hookpost")


if __name__ == "__main__":
    main()
