"""``hookpost login``: save a server and its token as a named profile (used with ``--profile NAME``)."""

import click

from hookpost.cli.apiclient import ApiClient, ApiError
from hookpost.cli.base import run
from hookpost.cli.target import Target, check_url, read_profiles, read_token_file, write_profiles
from hookpost.common.errors import InvalidInputError


@click.command("login")
@click.option("--api", "api_url", required=True, metavar="URL", help="The server's base URL (https://…).")
@click.option("--profile", "name", required=True, metavar="NAME", help="The profile's name (prod, staging, …).")
@click.option("--insecure", is_flag=True, help="Allow plain http to a host other than this machine.")
@click.option("--ca-file", metavar="PATH", default=None, help="Trust this CA (PEM) for the server's TLS.")
@click.option("--token-file", metavar="PATH", default=None, help="Read the token from this file instead of asking.")
def login(api_url: str, name: str, insecure: bool, ca_file: str | None, token_file: str | None) -> None:
    """Ask for an API token (not echoed), check it against the server, and save both as profile NAME in
    $XDG_CONFIG_HOME/hookpost/profiles.toml (~/.config/hookpost/profiles.toml, readable by you only).

    \b
    Example:
      hookpost login --api https://hookpost.example.com --profile prod
      hookpost --profile prod events list --status failed
    """
    name = name.strip()
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise InvalidInputError(f"a profile name is letters, digits, '-', '_' or '.', not {name!r}")
    url = check_url(api_url, insecure)
    if token_file:
        token = read_token_file(token_file)
    else:
        token = click.prompt("API token", hide_input=True, err=True).strip()
    if not token:
        raise InvalidInputError("no token given")
    target = Target(api=url, token=token, token_source="login", insecure=insecure, ca_file=ca_file)

    async def check() -> str:
        async with ApiClient(target, timeout=15) as client:
            try:
                await client.request("GET", "/events", params={"limit": "1"})
            except ApiError as exc:
                if exc.status != 403:  # a token whose role may not read (a publisher) is still a good token
                    raise
                return "the token is valid; its role may not read events"
            return "the token is valid"

    verdict = run(check())
    profiles = read_profiles()
    record: dict[str, object] = {"api": url, "token": token}
    if insecure:
        record["insecure"] = True
    if ca_file:
        record["ca_file"] = ca_file
    profiles[name] = record
    path = write_profiles(profiles)
    click.echo(f"saved profile {name!r} for {url} in {path} ({verdict}); use it with "
               f"'hookpost --profile {name} …'", err=True)
