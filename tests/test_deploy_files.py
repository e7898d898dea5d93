"""Cluster files (Dockerfile, compose, deploy/) run real `tuneforge` commands and install the right things.

No Docker engine runs here, so these tests parse the files and check them against the real CLI command tree
(tuneforge.cli) and the real settings (app.core.settings.Settings).
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
OUR_SERVICES = {"migrate", "api", "worker", "inference"}
THIRD_PARTY_SERVICES = {"postgres", "redis"}
ML_PACKAGES = ("torch", "transformers", "peft", "accelerate")
Services = dict[str, dict[str, Any]]


# ------------------------------------------------------------------------------ Dockerfile


@dataclass
class Stage:
    """One FROM block: its base (image or earlier stage) and its instructions in order."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def _logical_lines(text: str) -> Iterator[str]:
    """Docker's line model: comment lines dropped (also inside continuations), backslash joins lines."""
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = (pending + stripped).strip()
        pending = ""
        if line:
            yield line
    if pending.strip():
        yield pending.strip()


def _substitute(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), ""), value)


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """Stages by name (unnamed ones by index), with global ARG defaults substituted into FROM lines."""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(stages))
            current = Stage(name=name, base=_substitute(words[0], global_args))
            stages[name] = current
        elif current is None:
            if keyword == "ARG":
                key, _, default = rest.partition("=")
                global_args[key.strip()] = default.strip().strip('"')
        else:
            current.instructions.append((keyword, rest))
    return stages


def stage_chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and every stage it is built FROM, base first: together they make the image's layers."""
    chain = [stages[name]]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return chain


def _stage_args(chain: list[Stage]) -> dict[str, str]:
    args: dict[str, str] = {}
    for stage in chain:
        for keyword, rest in stage.instructions:
            if keyword == "ARG" and "=" in rest:
                key, _, default = rest.partition("=")
                args[key.strip()] = default.strip().strip('"')
    return args


def _shell_words(command: str) -> list[list[str]]:
    """A RUN shell line split into simple commands at &&, || and ;."""
    commands: list[list[str]] = [[]]
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    for token in lexer:
        if token in {"&&", "||", ";", "&", "|"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def pip_installs(chain: list[Stage]) -> list[str]:
    """Every requirement argument of every `pip install` the image runs, ARG defaults substituted."""
    variables = _stage_args(chain)
    found: list[str] = []
    for stage in chain:
        for keyword, rest in stage.instructions:
            if keyword != "RUN":
                continue
            for words in _shell_words(rest):
                for i in range(len(words) - 1):
                    if words[i].endswith("pip") and words[i + 1] == "install":
                        found += [_substitute(w, variables) for w in words[i + 2 :] if not w.startswith("-")]
    return found


def _split_extras(requirement: str) -> tuple[str, set[str]]:
    match = re.fullmatch(r"(.*?)(?:\[([\w,\s-]*)\])?", requirement)
    assert match is not None
    return match.group(1), {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}


def tuneforge_installs(chain: list[Stage]) -> list[set[str]]:
    """The extras of each install of this project (source tree `.` or a built tuneforge wheel)."""
    installs = []
    for requirement in pip_installs(chain):
        target, extras = _split_extras(requirement)
        if target in {".", "/src"} or re.search(r"tuneforge-\*?[^/]*\.whl\)?$", target):
            installs.append(extras)
    return installs


def image_command(chain: list[Stage]) -> list[str]:
    """ENTRYPOINT + CMD of the image, exec or shell form."""
    parts: dict[str, list[str]] = {"ENTRYPOINT": [], "CMD": []}
    for stage in chain:
        for keyword, rest in stage.instructions:
            if keyword in parts:
                parts[keyword] = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    return parts["ENTRYPOINT"] + parts["CMD"]


def image_has_healthcheck(chain: list[Stage]) -> bool:
    checks = [rest for stage in chain for keyword, rest in stage.instructions if keyword == "HEALTHCHECK"]
    return bool(checks) and checks[-1].upper() != "NONE"


# ------------------------------------------------------------------------------ the real CLI


def cli_root() -> Any:
    """The command tree behind the `tuneforge` console script (typer ships its own click, so duck-typed)."""
    import typer

    import tuneforge.cli as cli

    candidates: list[Any] = []
    for value in vars(cli).values():
        if isinstance(value, typer.Typer):
            candidates.append(typer.main.get_command(value))
        elif isinstance(value, click.Command):
            candidates.append(value)
    groups = [c for c in candidates if isinstance(getattr(c, "commands", None), dict)]
    assert groups, "tuneforge.cli defines no typer/click command group"
    return max(groups, key=lambda g: len(g.commands))


def invocation_problem(argv: list[str]) -> str | None:
    """None when argv is a complete, valid `tuneforge` command line, else why not."""
    if not argv or Path(argv[0]).name != "tuneforge":
        return f"{argv} does not run the tuneforge console script"
    command = cli_root()
    path, rest = ["tuneforge"], argv[1:]
    while isinstance(getattr(command, "commands", None), dict):
        names = sorted(command.commands)
        if not rest or rest[0].startswith("-"):
            return f"{argv}: `{' '.join(path)}` needs a subcommand ({names})"
        if rest[0] not in command.commands:
            return f"{argv}: `{rest[0]}` is not a subcommand of `{' '.join(path)}` ({names})"
        command, path, rest = command.commands[rest[0]], [*path, rest[0]], rest[1:]
    try:
        # Parses and type-checks the options exactly as the real command line would, without running it.
        command.make_context(" ".join(path), list(rest))
    except Exception as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else repr(exc)
        return f"{argv}: {message}"
    return None


def option_value(argv: list[str], option: str) -> str | None:
    for i, word in enumerate(argv):
        if word == option and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    return None


def command_imports(argv: list[str]) -> set[str]:
    """Modules a subcommand imports, lazily inside its function or the cli helpers it calls (read from source)."""
    command = cli_root()
    for word in argv[1:]:
        if not isinstance(getattr(command, "commands", None), dict):
            break
        command = command.commands[word]
    callback = inspect.unwrap(command.callback)
    module = sys.modules[callback.__module__]
    found: set[str] = {callback.__module__}
    seen: set[str] = set()
    pending = [callback]
    while pending:
        func = pending.pop()
        if func.__name__ in seen:
            continue
        seen.add(func.__name__)
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(func)))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                called = getattr(module, node.func.id, None)
                if inspect.isfunction(called) and called.__module__ == module.__name__:
                    pending.append(called)
    return found


def loaded_after_importing(modules: set[str]) -> set[str]:
    """Top-level modules a fresh interpreter holds after importing these."""
    code = "import importlib, json, sys\n"
    code += "".join(f"importlib.import_module({m!r})\n" for m in sorted(modules))
    code += "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------------------ settings


def settings_env_names() -> set[str]:
    from app.core.settings import Settings

    prefix = str(Settings.model_config.get("env_prefix", ""))
    return {(prefix + name).upper() for name in Settings.model_fields}


def settings_problem(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str | None:
    """None when Settings accepts these values, else the validation error."""
    from pydantic import ValidationError

    from app.core.settings import Settings

    with monkeypatch.context() as patch:
        for name in list(settings_env_names()):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        try:
            Settings()
        except ValidationError as exc:
            return str(exc)
    return None


REQUIRED_SECRET = "operator-set-secret"  # what a required ${VAR:?message} stands for once the operator set it
REQUIRED = re.compile(r"\$\{(\w+):?\?[^}]*\}")


def compose_default(value: str) -> str:
    """What compose makes of ${VAR:-default}, ${VAR-default}, ${VAR} unset, and a required ${VAR:?message} set."""
    value = REQUIRED.sub(REQUIRED_SECRET, value)
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> Services:
    return dict(compose["services"])


def target_of(service: dict[str, Any]) -> str:
    build = service.get("build")
    assert isinstance(build, dict) and "target" in build, "a service on our image builds it with a target"
    return str(build["target"])


def service_argv(service: dict[str, Any], stages: dict[str, Stage]) -> list[str]:
    """What the container runs: compose's entrypoint/command, falling back to the image's."""
    image = image_command(stage_chain(stages, target_of(service)))

    def words(value: Any) -> list[str]:
        return [str(v) for v in value] if isinstance(value, list) else shlex.split(str(value))

    if "entrypoint" in service:
        return words(service["entrypoint"]) + words(service.get("command", []))
    return words(service["command"]) if "command" in service else image


def has_healthcheck(service: dict[str, Any], stages: dict[str, Stage]) -> bool:
    """Compose's own healthcheck, or the one its image declares."""
    if "healthcheck" in service:
        return not service["healthcheck"].get("disable", False)
    return "build" in service and image_has_healthcheck(stage_chain(stages, target_of(service)))


def ours(services: Services) -> Services:
    return {
        name: svc
        for name, svc in services.items()
        if "build" in svc or str(svc.get("image", "")).startswith("tuneforge")
    }


# ------------------------------------------------------------------------------ Dockerfile tests


def test_dockerfile_parser_reads_stages_and_continuations() -> None:
    parsed = parse_dockerfile(
        'ARG IMG=python:3.11-slim\nFROM ${IMG} AS a\n# note\nRUN pip install x \\\n  # inline\n  ".[train]"\n'
        'FROM a AS b\nCMD ["tuneforge", "api"]\n'
    )
    assert parsed["a"].base == "python:3.11-slim"
    assert pip_installs(stage_chain(parsed, "b")) == ["x", ".[train]"]
    assert tuneforge_installs(stage_chain(parsed, "b")) == [{"train"}]
    assert image_command(stage_chain(parsed, "b")) == ["tuneforge", "api"]


def test_both_images_install_the_package(stages: dict[str, Stage], services: Services) -> None:
    for target in (target_of(services["api"]), target_of(services["worker"])):
        assert tuneforge_installs(stage_chain(stages, target)), f"image {target!r} never installs tuneforge"


def test_wheel_images_copy_it_from_a_stage_that_builds_it(stages: dict[str, Stage]) -> None:
    for name in stages:
        chain = stage_chain(stages, name)
        if not any(".whl" in r for r in pip_installs(chain)):
            continue
        sources = [
            m.group(1)
            for stage in chain
            for keyword, rest in stage.instructions
            if keyword == "COPY" and (m := re.search(r"--from=(\S+)", rest))
        ]
        assert sources, f"stage {name!r} installs a wheel it never copies in"
        for source in sources:
            builds = [
                rest
                for stage in stage_chain(stages, source)
                for keyword, rest in stage.instructions
                if keyword == "RUN" and "pip wheel" in rest
            ]
            assert builds and all("--no-deps" in b for b in builds), f"{source!r} must build only our wheel"


def test_processes_on_the_api_image_import_no_ml_stack(stages: dict[str, Stage], services: Services) -> None:
    """The API image has no torch: whatever its services' subcommands import must not need it."""
    api_target = target_of(services["api"])
    for name, svc in ours(services).items():
        if target_of(svc) != api_target:
            continue
        modules = command_imports(service_argv(svc, stages))
        heavy = loaded_after_importing(modules) & set(ML_PACKAGES)
        assert not heavy, f"{name} runs on the torch-free image but importing {sorted(modules)} loads {heavy}"


def test_api_image_has_no_ml_stack(stages: dict[str, Stage], services: Services) -> None:
    chain = stage_chain(stages, target_of(services["api"]))
    installs = pip_installs(chain)
    assert not [r for r in installs if r.lower().startswith(ML_PACKAGES)], installs
    assert all("train" not in extras for extras in tuneforge_installs(chain)), installs


def test_gpu_image_has_the_train_extra_and_the_pinned_torch(stages: dict[str, Stage], services: Services) -> None:
    chain = stage_chain(stages, target_of(services["worker"]))
    assert any("train" in extras for extras in tuneforge_installs(chain))
    torch = [Requirement(r) for r in pip_installs(chain) if r.startswith("torch")]
    assert torch, "the GPU image installs torch explicitly, before the extra, so pip cannot pick another"
    pinned = [str(s.version) for r in torch for s in r.specifier if s.operator == "=="]
    assert pinned, f"torch must be pinned with == in the GPU image, got {torch}"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    train = [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["train"]]
    torch_range = next(r.specifier for r in train if r.name == "torch")
    assert all(torch_range.contains(v) for v in pinned), f"torch {pinned} is outside [train]'s {torch_range}"


def test_image_default_commands_are_real(stages: dict[str, Stage], services: Services) -> None:
    for target in {target_of(s) for s in ours(services).values()}:
        problem = invocation_problem(image_command(stage_chain(stages, target)))
        assert problem is None, f"CMD of image {target!r}: {problem}"


# ------------------------------------------------------------------------------ compose tests


def test_compose_has_the_cluster_services(services: Services) -> None:
    assert set(services) >= OUR_SERVICES | THIRD_PARTY_SERVICES
    assert set(ours(services)) >= OUR_SERVICES


def test_every_service_on_our_image_runs_a_real_subcommand(stages: dict[str, Stage], services: Services) -> None:
    problems = {name: invocation_problem(service_argv(svc, stages)) for name, svc in ours(services).items()}
    assert {name: p for name, p in problems.items() if p} == {}
    subcommand = {name: service_argv(svc, stages)[1] for name, svc in ours(services).items()}
    assert subcommand["migrate"] == "migrate"
    assert subcommand["worker"] == "worker"
    assert subcommand["inference"] == "inference"
    assert subcommand["api"] in {"api", "serve"}


def test_services_build_known_targets_from_our_dockerfile(stages: dict[str, Stage], services: Services) -> None:
    tag_targets: dict[str, set[str]] = {}
    for name, svc in ours(services).items():
        build = svc["build"]
        assert (COMPOSE.parent / build.get("context", ".")).resolve() == ROOT, name
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile", name
        assert target_of(svc) in stages, f"{name}: no stage {target_of(svc)!r} in the Dockerfile"
        tag_targets.setdefault(str(svc.get("image", name)), set()).add(target_of(svc))
    # Two targets tagged with one image name would overwrite each other.
    assert all(len(t) == 1 for t in tag_targets.values()), tag_targets
    gpu = target_of(services["worker"])
    assert target_of(services["inference"]) == gpu
    assert target_of(services["api"]) != gpu and target_of(services["migrate"]) == target_of(services["api"])


def test_our_services_use_only_real_settings(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    known = settings_env_names()
    for name, svc in ours(services).items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: write environment as a mapping"
        unknown = sorted(k for k in env if k not in known)
        assert not unknown, f"{name}: {unknown} are not fields of app.core.settings.Settings"
        resolved = {k: compose_default(str(v)) for k, v in env.items()}
        assert settings_problem(resolved, monkeypatch) is None, name
        assert resolved.get("TUNEFORGE_DATABASE_URL", "").startswith("postgresql+psycopg://"), name


def test_depends_on_names_services_with_fitting_conditions(stages: dict[str, Stage], services: Services) -> None:
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        deps = {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on undefined {dep}"
            condition = spec.get("condition", "service_started")
            assert condition in conditions, (name, dep, condition)
            if condition == "service_healthy":
                assert has_healthcheck(services[dep], stages), f"{name} waits on {dep}: no healthcheck"
    for name in OUR_SERVICES - {"migrate"}:
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert str(services["migrate"].get("restart", "no")) == "no"


def test_healthchecks_probe_the_port_the_service_listens_on(stages: dict[str, Stage], services: Services) -> None:
    for name in ("postgres", "redis", "api"):
        assert "healthcheck" in services[name], name
    for name, svc in ours(services).items():
        test = " ".join(map(str, svc.get("healthcheck", {}).get("test", [])))
        for port in re.findall(r"https?://[\w.]+:(\d+)/", test):
            assert port == option_value(service_argv(svc, stages), "--port"), f"{name} probes port {port}"


def test_api_healthcheck_hits_a_real_route(services: Services, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from app.core.settings import Settings
    from app.main import create_app

    test = " ".join(map(str, services["api"]["healthcheck"]["test"]))
    paths = re.findall(r"https?://[\w.]+:\d+(/[\w/-]*)", test)
    assert paths, test
    client = TestClient(create_app(Settings(data_dir=tmp_path)))
    for path in paths:
        # Any answer but 404 means the route exists (/ready may well say 503 against an unmigrated database).
        assert client.get(path).status_code != 404, path


def test_api_forwards_each_base_model_to_an_inference_service_serving_it(
    stages: dict[str, Stage], services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.settings import Settings

    api_env = {k: compose_default(str(v)) for k, v in services["api"]["environment"].items()}
    with monkeypatch.context() as patch:
        for name, value in api_env.items():
            patch.setenv(name, value)
        settings = Settings()
    routes = settings.inference_url_map
    assert routes, "the API has no TUNEFORGE_INFERENCE_URLS, so fine-tuned models cannot be served"
    assert set(routes) <= set(settings.base_model_map), (routes, settings.base_model_map)
    for base, url in routes.items():
        match = re.fullmatch(r"https?://([\w.-]+):(\d+)(/.*)?", url)
        assert match is not None, url
        host, port = match.group(1), match.group(2)
        assert host in services, f"{base} goes to {host}, which is no compose service"
        argv = service_argv(services[host], stages)
        assert argv[1] == "inference" and option_value(argv, "--base-model") == base, (base, argv)
        assert option_value(argv, "--port") == port, (base, argv)


def test_published_api_port_is_the_one_it_listens_on(stages: dict[str, Stage], services: Services) -> None:
    container_ports = {str(p).rsplit(":", 1)[-1] for p in services["api"].get("ports", [])}
    assert container_ports == {option_value(service_argv(services["api"], stages), "--port")}


def test_gpu_override_only_touches_defined_services(services: Services) -> None:
    override = yaml.safe_load((DEPLOY / "compose.gpu.yml").read_text())
    assert set(override["services"]) <= set(services)
    for svc in override["services"].values():
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert all("gpu" in d["capabilities"] for d in devices)


# ------------------------------------------------------------------------------ deploy/ tests


def test_env_example_names_real_settings_with_valid_values(monkeypatch: pytest.MonkeyPatch) -> None:
    env: dict[str, str] = {}
    for line in (DEPLOY / "tuneforge.env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    assert env and not sorted(set(env) - settings_env_names())
    assert settings_problem(env, monkeypatch) is None


def test_systemd_units_run_real_subcommands() -> None:
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert units
    for unit in units:
        lines = unit.read_text().splitlines()
        execs = [line.split("=", 1)[1] for line in lines if line.startswith("ExecStart=")]
        assert len(execs) == 1, unit.name
        problem = invocation_problem(shlex.split(execs[0]))
        assert problem is None, f"{unit.name}: {problem}"


def test_ci_script_is_executable_bash_that_ends_in_make_test() -> None:
    script = ROOT / ".ci" / "run"
    assert script.stat().st_mode & 0o111, ".ci/run must be executable"
    lines = [line.strip() for line in script.read_text().splitlines() if line.strip()]
    assert lines[0].startswith("#!") and "bash" in lines[0]
    assert lines[-1] in {"make test", "exec make test"}


def test_every_data_file_in_the_packages_ships_in_the_wheel() -> None:
    """The images install a wheel, so a data file that package-data misses exists only in a source checkout."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = [p for globs in tool.get("package-data", {}).values() for p in globs]
    packages = {p.rstrip("*").rstrip(".") for p in tool["packages"]["find"]["include"]}
    missed = [
        str(path.relative_to(ROOT))
        for package in sorted(packages)
        for path in (ROOT / package).rglob("*")
        if path.is_file()
        and path.suffix not in {".py", ".pyc", ".pyi"}
        and "__pycache__" not in path.parts
        and not any(path.match(p) for p in patterns)
    ]
    assert missed == [], f"add these to [tool.setuptools.package-data]: {missed}"


# ------------------------------------------------------------------------------ the inference service key


def _loopback(host: str | None) -> bool:
    from serve.settings import is_loopback

    return host is not None and is_loopback(host)


def test_tuneforge_inference_listens_on_loopback_unless_told_otherwise() -> None:
    command = cli_root().commands["inference"]
    host = next(p for p in command.params if p.name == "host")
    assert _loopback(str(host.default)), host.default


def test_compose_inference_key_is_required_and_never_a_literal(stages: dict[str, Stage], services: Services) -> None:
    """The key comes from the operator (${VAR:?...}: compose refuses to start without it), never a default."""
    key = "TUNEFORGE_INFERENCE_API_KEY"
    for name in ("api", "inference"):
        value = str(services[name].get("environment", {}).get(key, ""))
        assert REQUIRED.fullmatch(value), f"{name}: {key} must be ${{VAR:?message}} with no default, got {value!r}"
    argv = service_argv(services["inference"], stages)
    if not _loopback(option_value(argv, "--host") or "127.0.0.1"):
        assert key in services["inference"]["environment"], "inference listens off loopback: it needs the key"
    for path in (COMPOSE, DEPLOY / "compose.gpu.yml"):
        text = path.read_text()
        assert not re.search(r"INFERENCE_API_KEY[^\n]*:-", text), f"{path.name} gives the inference key a default"


def test_env_example_and_units_carry_no_inference_key() -> None:
    """The example leaves the key empty for the operator to generate: a forgotten key is an error, not an open port."""
    lines = (DEPLOY / "tuneforge.env.example").read_text().splitlines()
    values = [line.split("=", 1)[1].strip() for line in lines if line.startswith("TUNEFORGE_INFERENCE_API_KEY=")]
    assert values == [""], values
    assert "openssl rand" in (DEPLOY / "tuneforge.env.example").read_text()
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        text = unit.read_text()
        assert "INFERENCE_API_KEY" not in text, f"{unit.name}: keep the key in the 0600 environment file"
        for line in text.splitlines():
            if line.startswith("ExecStart=") and " inference " in line:
                assert "EnvironmentFile=" in text, unit.name  # where the key comes from


def test_inference_refuses_a_public_address_without_the_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    env["TUNEFORGE_DATA_DIR"] = str(tmp_path)
    for host in ("0.0.0.0", "::", "10.1.2.3", "gpu1.internal"):
        result = subprocess.run(
            [sys.executable, "-m", "tuneforge", "inference", "--base-model", "tiny-chat", "--host", host],
            env={**env, "TUNEFORGE_INFERENCE_API_KEY": ""},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, (host, result.stdout, result.stderr)
        assert f"refusing to listen on {host}" in result.stderr and "TUNEFORGE_INFERENCE_API_KEY" in result.stderr
        assert not (tmp_path / "models").exists()  # refused before any model was loaded
