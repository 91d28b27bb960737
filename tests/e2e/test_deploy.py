"""The deployment files agree with the code, and the image's pip commands build a working ``hookpost``.

Docker does not run here, so (1) the compose file and the Kubernetes manifests are read with PyYAML and every
``hookpost`` command line, ``HOOKPOST_*`` variable, probe and grace period in them is checked against the CLI,
:class:`common.settings.Settings` and the ops server; (2) the Dockerfile's build steps (build context filtered
by ``.dockerignore``, ``python -m venv``, ``pip install .``) run in a temporary folder and the installed
``hookpost --help`` must work.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import click
import pytest
import yaml

from hookpost.cli.main import cli
from hookpost.common.amqp import AmqpConnection
from hookpost.common.durations import parse_duration
from hookpost.common.settings import Settings, load_settings
from hookpost.common.topology import topology_from
from hookpost.dispatcher.metrics import Metrics
from hookpost.dispatcher.ops import OpsServer
from hookpost.producer import Publisher
from hookpost.web.server import ApiServer

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"

SETTINGS_VARS = {f"HOOKPOST_{name.upper()}" for name in Settings.model_fields}
OPS_PATHS = {"/healthz", "/readyz"}

# The Dockerfile's build steps, run by test_image_build_steps_install_a_working_cli (with paths substituted).
VENV_STEP = "RUN python -m venv /opt/hookpost"
PIP_STEP = "RUN /opt/hookpost/bin/pip install --no-cache-dir ."


# --- reading the files -------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """Return ``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def dockerfile_json(instruction: str) -> list[str]:
    """Return the exec-form (JSON array) arguments of the last ``instruction`` (ENTRYPOINT, CMD)."""
    found = [args for word, args in dockerfile_instructions() if word == instruction]
    assert found, f"no {instruction} in the Dockerfile"
    value = yaml.safe_load(found[-1])
    assert isinstance(value, list), f"{instruction} must use the exec form (a JSON array), got {found[-1]!r}"
    return value


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted([*K8S.glob("*.yaml"), *K8S.glob("*.yml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield every pod spec inside a manifest (Deployment, CronJob, Job, ...)."""
    if isinstance(doc, dict):
        if isinstance(doc.get("containers"), list):
            yield doc
        for value in doc.values():
            yield from pod_specs(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from pod_specs(value)


def is_hookpost_image(image: str) -> bool:
    name = image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]
    return name == "hookpost"


def compose_hookpost_services() -> dict[str, dict[str, Any]]:
    out = {}
    for name, svc in compose()["services"].items():
        build = svc.get("build")
        dockerfile = build.get("dockerfile", "") if isinstance(build, dict) else ""
        if dockerfile.endswith("deploy/Dockerfile") or is_hookpost_image(svc.get("image", "")):
            out[name] = svc
    return out


def as_argv(value: Any) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def hookpost_argv(entrypoint: Any, command: Any) -> list[str]:
    """The arguments ``hookpost`` gets, given a container's entrypoint/command overrides (None = the image's)."""
    entry = dockerfile_json("ENTRYPOINT") if entrypoint is None else as_argv(entrypoint)
    assert entry and Path(entry[0]).name == "hookpost", f"entrypoint {entry} does not run hookpost"
    return entry[1:] + (dockerfile_json("CMD") if command is None else as_argv(command))


def compose_commands() -> dict[str, list[str]]:
    return {name: hookpost_argv(svc.get("entrypoint"), svc.get("command"))
            for name, svc in compose_hookpost_services().items()}


def k8s_containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(file, pod spec, container)`` for every container that runs the Hookpost image."""
    out = []
    for fname, doc in k8s_docs():
        for spec in pod_specs(doc):
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                if is_hookpost_image(c.get("image", "")):
                    out.append((fname, spec, c))
    return out


def k8s_argv(container: dict[str, Any]) -> list[str]:
    command, args = container.get("command"), container.get("args")
    if command is not None:  # command replaces the ENTRYPOINT and drops the image's CMD
        return hookpost_argv(command, args or [])
    return hookpost_argv(None, args)


def k8s_objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_docs() if doc.get("kind") == kind}


def k8s_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets from its ConfigMaps, Secrets and ``env`` (literal values only)."""
    env: dict[str, str] = {}
    maps, secrets = k8s_objects("ConfigMap"), k8s_objects("Secret")
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            name = src["configMapRef"]["name"]
            assert name in maps, f"envFrom names ConfigMap {name!r}, which the manifests do not define"
            env.update(maps[name].get("data", {}))
        if "secretRef" in src:
            name = src["secretRef"]["name"]
            assert name in secrets, f"envFrom names Secret {name!r}, which the manifests do not define"
            env.update(secrets[name].get("stringData", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def compose_env(svc: dict[str, Any]) -> dict[str, str]:
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    # resolve compose interpolation: ${NAME:-default} to its default, a required ${NAME:?message} to a stand-in;
    # a variable without a value is taken from the host's environment (here: unset)
    out = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in raw.items() if v is not None}
    return {k: re.sub(r"\$\{([A-Z_]+):\?[^}]*\}", lambda m: f"stand-in-{m.group(1).lower()}", v)
            for k, v in out.items()}


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Load :class:`Settings` exactly as a process with environment ``env`` would."""
    for key in list(os.environ):
        if key.startswith("HOOKPOST_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def resolve(argv: list[str]) -> tuple[click.Command, dict[str, Any]]:
    """Resolve ``hookpost <argv>`` to its click command and parse its options (raises on anything unknown)."""
    command: click.Command = cli
    path = ["hookpost"]
    rest = list(argv)
    while isinstance(command, click.Group):
        assert rest, f"'{' '.join(path)}' needs a subcommand"
        assert rest[0] in command.commands, f"'{' '.join(path)} {rest[0]}' is not a command"
        path.append(rest.pop(0))
        command = command.commands[path[-1]]
    ctx = command.make_context(" ".join(path), rest)
    return command, ctx.params


# --- (1) the files agree with the code ---------------------------------------------------------------------

def test_dockerfile_shape():
    steps = dockerfile_instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    assert all(re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), f.split()[0])
               == "python:3.11-slim" for f in froms)
    assert dockerfile_json("ENTRYPOINT") == ["hookpost"]
    assert dockerfile_json("CMD") == ["dispatcher"]
    user = [a for w, a in steps if w == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0"), "the image must not run as root"
    exposed = " ".join(a for w, a in steps if w == "EXPOSE").split()
    assert exposed == [str(Settings.model_fields[f].default) for f in ("ops_port", "server_port")]
    for word, env in steps:
        if word == "ENV":
            for name in re.findall(r"(HOOKPOST_\w+)=", env):
                assert name in SETTINGS_VARS, f"Dockerfile sets {name}, which is not a setting"
    lines = [f"{w} {a}" for w, a in steps]
    assert VENV_STEP in lines
    assert any(line.startswith("RUN ") and PIP_STEP.removeprefix("RUN ") + " &&" in line for line in lines)
    # extra CA certificates (a TLS-intercepting proxy) reach pip as a build secret, in the build stage only
    runtime_stage = lines[[i for i, line in enumerate(lines) if line.startswith("FROM ")][-1]:]
    assert any("--mount=type=secret,id=extra-ca" in line for line in lines)
    assert not any("secret" in line or "ca-certificates" in line for line in runtime_stage)


def test_every_hookpost_command_is_a_real_cli_command():
    commands = compose_commands()
    for service, argv in commands.items():
        try:
            resolve(argv)
        except click.ClickException as exc:
            pytest.fail(f"compose service {service}: 'hookpost {shlex.join(argv)}' is rejected: {exc.format_message()}")
    by_command = {name: argv[0] for name, argv in commands.items()}
    assert {"dispatcher", "janitor", "demo-receiver", "server"} <= set(by_command.values()), by_command
    _, params = resolve(commands["demo-receiver"])
    assert params["host"] == "0.0.0.0" and params["port"] == 8099

    seen = {}
    for fname, _, container in k8s_containers():
        argv = k8s_argv(container)
        try:
            _, params = resolve(argv)
        except click.ClickException as exc:
            pytest.fail(f"{fname}: 'hookpost {shlex.join(argv)}' is rejected: {exc.format_message()}")
        seen[argv[0]] = params
    assert set(seen) >= {"dispatcher", "janitor", "server"}, seen
    assert seen["janitor"]["once"] is True, "the CronJob must run one janitor pass: 'janitor --once'"


def test_every_hookpost_variable_is_a_setting_with_a_valid_value(monkeypatch):
    for name, svc in compose_hookpost_services().items():
        env = compose_env(svc)
        unknown = {k for k in env if k.startswith("HOOKPOST_")} - SETTINGS_VARS
        assert not unknown, f"compose service {name} sets unknown variables {unknown}"
        settings_from(env, monkeypatch)  # every value parses
    dispatcher = settings_from(compose_env(compose()["services"]["dispatcher"]), monkeypatch)
    assert "replicaSet=rs0" in dispatcher.mongodb_url
    assert dispatcher.allow_private_targets is True and dispatcher.log_format == "json"

    for kind in ("ConfigMap", "Secret"):
        for name, doc in k8s_objects(kind).items():
            keys = set(doc.get("data") or {}) | set(doc.get("stringData") or {})
            unknown = {k for k in keys if k.startswith("HOOKPOST_")} - SETTINGS_VARS
            assert not unknown, f"{kind} {name} sets unknown variables {unknown}"
    for fname, _, container in k8s_containers():
        names = {e["name"] for e in container.get("env", [])}
        assert not {n for n in names if n.startswith("HOOKPOST_")} - SETTINGS_VARS, fname
        env = k8s_env(container)
        assert "HOOKPOST_RABBITMQ_URL" in env and "HOOKPOST_MONGODB_URL" in env, fname
        s = settings_from(env, monkeypatch)
        assert s.log_format == "json"
    secret_keys = {k for doc in k8s_objects("Secret").values() for k in doc.get("stringData", {})}
    assert secret_keys >= {"HOOKPOST_RABBITMQ_URL", "HOOKPOST_MONGODB_URL"}, "URLs with credentials go in a Secret"
    for doc in k8s_objects("ConfigMap").values():
        assert not {k for k in doc.get("data", {}) if k.endswith("_URL")}, "URLs with credentials go in a Secret"


async def test_probes_hit_the_ops_servers_real_endpoints_on_its_port(monkeypatch, settings):
    probes: list[tuple[str, str, int]] = []  # (where, path, port)
    server_probes: list[tuple[str, str, int]] = []
    for fname, spec, container in k8s_containers():
        s = settings_from(k8s_env(container), monkeypatch)
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        kinds = {k: container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in container}
        if k8s_argv(container)[0] == "server":
            assert {"livenessProbe", "readinessProbe"} <= set(kinds), f"{fname}: liveness and readiness probes"
            assert kinds["readinessProbe"]["httpGet"]["path"] == "/readyz"
            for kind, probe in kinds.items():
                port = probe["httpGet"]["port"]
                port = ports[port] if isinstance(port, str) else port
                assert port == s.server_port, f"{fname} {kind}: port {port} but HOOKPOST_SERVER_PORT is " \
                                              f"{s.server_port}"
                server_probes.append((f"{fname} {kind}", probe["httpGet"]["path"], port))
            assert s.server_host == "0.0.0.0", f"{fname}: the server must listen on every address in a pod"
            continue
        if k8s_argv(container)[0] != "dispatcher":
            assert not kinds, f"{fname}: only the dispatcher and the server serve probes"
            continue
        assert {"livenessProbe", "readinessProbe"} <= set(kinds), f"{fname}: liveness and readiness probes"
        assert kinds["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert kinds["livenessProbe"]["httpGet"]["path"] == "/healthz"
        for kind, probe in kinds.items():
            port = probe["httpGet"]["port"]
            port = ports[port] if isinstance(port, str) else port
            assert port == s.ops_port, f"{fname} {kind}: port {port} but HOOKPOST_OPS_PORT is {s.ops_port}"
            probes.append((f"{fname} {kind}", probe["httpGet"]["path"], port))
        grace = spec.get("terminationGracePeriodSeconds", 30)
        assert grace > s.shutdown_grace, f"{fname}: terminationGracePeriodSeconds {grace} <= {s.shutdown_grace}"
        annotations = next(doc for f, doc in k8s_docs() if f == fname)["spec"]["template"]["metadata"].get(
            "annotations", {})
        if "prometheus.io/port" in annotations:
            assert int(annotations["prometheus.io/port"]) == s.ops_port
            assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    for svc in k8s_objects("Service").values():
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ("ops", 9000, "http", 8000), svc["metadata"]["name"]

    for name, svc in compose_hookpost_services().items():
        if hookpost_argv(svc.get("entrypoint"), svc.get("command"))[0] == "server":
            s = settings_from(compose_env(svc), monkeypatch)
            test = " ".join(as_argv(svc["healthcheck"]["test"]))
            for port, path in re.findall(r"http://127\.0\.0\.1:(\d+)(/\w+)", test):
                assert int(port) == s.server_port
                server_probes.append((f"compose {name}", path, int(port)))
            assert f"{s.server_port}:{s.server_port}" in [str(p) for p in svc["ports"]]
            continue
        if hookpost_argv(svc.get("entrypoint"), svc.get("command"))[0] != "dispatcher":
            continue
        s = settings_from(compose_env(svc), monkeypatch)
        test = " ".join(as_argv(svc["healthcheck"]["test"]))
        urls = re.findall(r"http://127\.0\.0\.1:(\d+)(/\w+)", test)
        assert urls, f"compose {name}: the health check should GET an ops endpoint"
        for port, path in urls:
            assert int(port) == s.ops_port
            probes.append((f"compose {name}", path, int(port)))
        stop_grace = parse_duration(svc.get("stop_grace_period", "10s"))
        assert stop_grace > s.shutdown_grace, f"compose {name}: stop_grace_period {stop_grace}s is too short"
    assert probes

    # the paths are the ops server's real endpoints: start one and ask
    ops = OpsServer(Metrics(), lambda: {"broker": True, "store": True}, "127.0.0.1", 0)
    port = await ops.start()
    try:
        async with aiohttp.ClientSession() as http:
            for where, path, _ in probes:
                assert path in OPS_PATHS, f"{where}: {path} is not an ops endpoint"
                async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                    assert resp.status == 200, f"{where}: GET {path} answered {resp.status}"
    finally:
        await ops.stop()

    # the server's probe paths are its real endpoints, answered without a token
    assert len(server_probes) >= 3, server_probes
    server = ApiServer(settings, host="127.0.0.1", port=0)
    port = await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            for where, path, _ in server_probes:
                assert path in OPS_PATHS, f"{where}: {path} is not a probe endpoint"
                async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                    assert resp.status == 200, f"{where}: GET {path} answered {resp.status}"
    finally:
        await server.stop()


def test_compose_infrastructure():
    services = compose()["services"]
    rabbit, mongo = services["rabbitmq"], services["mongo"]
    assert rabbit["image"].startswith("rabbitmq:3") and "management" in rabbit["image"]
    assert any(str(p).endswith("15672") for p in rabbit["ports"]), "management UI port"
    assert mongo["image"] == "mongo:7"
    assert "--replSet" in as_argv(mongo["command"])
    assert "rs.initiate" in " ".join(as_argv(mongo["healthcheck"]["test"]))
    volumes = set(compose()["volumes"])
    for svc in (rabbit, mongo):
        assert "healthcheck" in svc
        assert any(str(v).split(":")[0] in volumes for v in svc["volumes"]), "named volumes for broker and store"
    dispatcher = services["dispatcher"]
    assert dispatcher.get("deploy", {}).get("replicas", 1) >= 2
    for dep in ("rabbitmq", "mongo"):
        assert dispatcher["depends_on"][dep]["condition"] == "service_healthy"


# --- (2) the image's build steps -----------------------------------------------------------------------------

def dockerignore_patterns() -> list[tuple[bool, str]]:
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            out.append((negate, line.lstrip("!").strip("/")))
    return out


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Translate a .dockerignore pattern: ``**`` spans folders, ``*`` and ``?`` stay inside one name."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            out, i = out + pattern[i:j + 1], j + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(rel: str, patterns: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, pattern in patterns:
        regex = pattern_regex(pattern)
        if any(regex.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def build_context(dest: Path) -> list[str]:
    """Copy the repository to ``dest`` the way ``docker build`` sends it (minus .dockerignore); return the files."""
    patterns = dockerignore_patterns()
    files = []
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT).as_posix()
        if path.is_file() and not ignored(rel, patterns):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            files.append(rel)
    return files


def test_dockerignore_rules():
    patterns = dockerignore_patterns()
    for rel in (".git/config", "tests/conftest.py", "CHANGELOG.md", ".ci/run",
                "cli/__pycache__/main.cpython-311.pyc", ".venv/bin/python",
                "hookpost.egg-info/PKG-INFO", "deploy/k8s/secret.yaml", "docs/deployment.md", ".env"):
        assert ignored(rel, patterns), rel
    for rel in ("setup.cfg", "pyproject.toml", "cli/main.py", "common/settings.py", "store/client.py", "README.md"):
        assert not ignored(rel, patterns), rel


@pytest.mark.slow
def test_image_build_steps_install_a_working_cli(tmp_path):
    src, venv = tmp_path / "src", tmp_path / "opt-hookpost"
    files = build_context(src)
    assert "setup.cfg" in files and "cli/main.py" in files
    assert not [f for f in files if f.startswith(("tests/", ".git/")) or "__pycache__" in f]

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOOKPOST_", "PYTHONPATH", "VIRTUAL_ENV"))}
    steps = [
        # RUN python -m venv /opt/hookpost
        ([sys.executable, "-m", "venv", str(venv)], src),
        # RUN /opt/hookpost/bin/pip install --no-cache-dir .
        ([str(venv / "bin" / "pip"), "install", "--no-cache-dir", "."], src),
    ]
    for argv, cwd in steps:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, f"{shlex.join(argv)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    # run from elsewhere, so only the installed package can be imported
    hookpost = str(venv / "bin" / "hookpost")
    proc = subprocess.run([hookpost, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: hookpost" in proc.stdout
    for command in ("dispatcher", "janitor", "demo-receiver", "topology", "events", "webhooks", "server", "tokens"):
        assert re.search(rf"^\s+{command}\s", proc.stdout, re.M), f"{command} missing from hookpost --help"
    proc = subprocess.run([hookpost, "janitor", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "--once" in proc.stdout
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", "import hookpost.cli; print(hookpost.cli.__file__)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and Path(proc.stdout.strip()).is_relative_to(venv), proc.stdout
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", "import hookpost.web.server, hookpost.admin"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # nothing is installed under a generic top-level name
    site = next((venv / "lib").glob("python3*/site-packages"))
    for name in ("common", "cli", "store", "producer", "dispatcher"):
        assert not (site / name).exists(), f"{name}/ installed at the top level of site-packages"


@pytest.mark.slow
async def test_built_wheel_installs_beside_an_app_with_its_own_common_package(tmp_path, settings):
    """An upstream application with its own ``common`` package installs the Hookpost wheel and publishes a change
    through ``hookpost.producer.Publisher``: no module of either shadows the other."""
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOOKPOST_", "PYTHONPATH", "VIRTUAL_ENV"))}
    wheels, venv, app = tmp_path / "wheels", tmp_path / "venv", tmp_path / "app"
    for argv in ([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                  str(repo)],
                 [sys.executable, "-m", "venv", str(venv)]):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = next(wheels.glob("hookpost-*.whl"))
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], env=env,
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (app / "common").mkdir(parents=True)
    (app / "common" / "__init__.py").write_text("NAME = 'the app own common'\n")
    (app / "main.py").write_text(textwrap.dedent(f"""
        import asyncio
        import common
        from hookpost.producer import Publisher

        async def main():
            async with Publisher({settings.rabbitmq_url!r}, prefix={settings.prefix!r}) as publisher:
                await publisher.publish({{"id": "chg-wheel", "type": "article.updated",
                                          "entity": {{"kind": "article", "id": "A-1"}}}})
            print(common.NAME)

        asyncio.run(main())
    """))
    async with Publisher.from_settings(settings, declare=True):
        pass  # the topology, as the dispatcher would declare it
    proc = subprocess.run([str(venv / "bin" / "python"), "main.py"], cwd=app, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "the app own common"
    conn = await AmqpConnection.connect([settings.rabbitmq_url], name="wheel-test")
    try:
        assert await (await conn.channel()).queue_depth(topology_from(settings).changes_queue) == 1
    finally:
        await conn.close()
