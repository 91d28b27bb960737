"""deploy/docker-compose.yml is a valid Compose file (the Compose Specification's JSON Schema) and keeps our
rules: every long-running service has a health check and a restart policy, the dispatcher's stop grace is above
HOOKPOST_SHUTDOWN_GRACE, secrets come from the environment (never a literal), and RabbitMQ may open enough files."""

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from hookpost.common.durations import parse_duration
from hookpost.common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy/docker-compose.yml"
SCHEMA = Path(__file__).with_name("schemas") / "compose-spec.json"
RABBITMQ_MIN_NOFILE = 65536
SECRET_WORDS = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL", re.I)
URL_PASSWORD = re.compile(r"://[^/@\s:]+:(\$\{[^}]*\}|[^@\s/]+)@")  # user:PASSWORD@ in a URL


def load() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def validate(doc: dict[str, Any]) -> list[str]:
    """The schema errors of a compose document, as ``path: message`` lines."""
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def one_shots(services: dict[str, Any]) -> set[str]:
    """Services that others wait for to complete (``service_completed_successfully``): they run once and exit."""
    return {dep for svc in services.values() for dep, cond in (svc.get("depends_on") or {}).items()
            if isinstance(cond, dict) and cond.get("condition") == "service_completed_successfully"}


def test_the_compose_file_matches_the_compose_specification():
    assert validate(load()) == []


def test_the_schema_check_can_fail():
    doc = load()
    doc["services"]["dispatcher"]["restarts"] = "always"  # not a Compose key
    doc["services"]["server"]["healthcheck"]["interval"] = 10
    doc["services"]["janitor"]["stop_grace_period"] = ["30s"]
    errors = validate(doc)
    assert len(errors) == 3, errors


def test_long_running_services_have_a_health_check_and_a_restart_policy():
    services = load()["services"]
    once = one_shots(services)
    assert once == {"topology"}
    for name in once:
        assert services[name].get("restart") == "no", f"{name} runs once: restart: \"no\""
    for name, svc in services.items():
        if name in once:
            continue
        check = svc.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name}: no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert svc.get("restart") in ("always", "unless-stopped", "on-failure"), f"{name}: no restart policy"


def test_dispatcher_stop_grace_is_above_its_shutdown_grace():
    svc = load()["services"]["dispatcher"]
    grace = parse_duration(str(svc["environment"].get("HOOKPOST_SHUTDOWN_GRACE",
                                                      Settings.model_fields["shutdown_grace"].default)))
    stop = parse_duration(svc.get("stop_grace_period", "10s"))
    assert stop > grace, f"stop_grace_period {stop}s <= HOOKPOST_SHUTDOWN_GRACE {grace}s"
    assert svc["deploy"]["mode"] == "replicated" and svc["deploy"]["replicas"] >= 2


def secret_values(doc: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """``(service, variable, value)`` of every variable that carries a secret: named like one, or a URL with a
    password in it."""
    out = []
    for name, svc in doc["services"].items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict([*item.split("=", 1), None][:2] for item in env)
        for key, value in env.items():
            text = None if value is None else str(value)
            if SECRET_WORDS.search(key) or (text and URL_PASSWORD.search(text)):
                out.append((name, key, text))
    return out


def literal_secrets(doc: dict[str, Any]) -> list[str]:
    """Secrets written in the file: a value that is not wholly from the environment (``${NAME:?...}`` or
    ``${NAME}``), or a default given in the file (``${NAME:-literal}``)."""
    bad = []
    for service, key, value in secret_values(doc):
        if value is None:
            continue  # taken from the environment compose runs in
        password = URL_PASSWORD.search(value)
        secret = password.group(1) if password else value
        if not re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*(:?\?[^}]*)?\}", secret):
            bad.append(f"{service}: {key}")
    return bad


def test_secrets_come_from_the_environment_never_from_literals():
    doc = load()
    found = secret_values(doc)
    assert {key for _, key, _ in found} >= {"HOOKPOST_RABBITMQ_URL", "RABBITMQ_DEFAULT_PASS",
                                              "HOOKPOST_SESSION_SECRET"}, found
    assert literal_secrets(doc) == []
    # the rule catches a literal and a literal default
    doc["services"]["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"] = "hookpost"
    doc["services"]["server"]["environment"]["HOOKPOST_SESSION_SECRET"] = "${SESSION:-change-me}"
    assert literal_secrets(doc) == ["rabbitmq: RABBITMQ_DEFAULT_PASS", "server: HOOKPOST_SESSION_SECRET"]


def test_rabbitmq_may_open_enough_files():
    nofile = load()["services"]["rabbitmq"]["ulimits"]["nofile"]
    soft, hard = (nofile, nofile) if isinstance(nofile, int) else (nofile["soft"], nofile["hard"])
    assert soft >= RABBITMQ_MIN_NOFILE and hard >= soft


@pytest.mark.parametrize("name", ["dispatcher", "server", "janitor", "demo-receiver", "topology"])
def test_hookpost_services_are_built_from_the_dockerfile(name):
    svc = load()["services"][name]
    assert svc["build"]["dockerfile"] == "deploy/Dockerfile" and svc["build"]["context"] == ".."
