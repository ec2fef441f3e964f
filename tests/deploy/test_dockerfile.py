"""The Dockerfile makes the choices tests/e2e/test_wheel.py proves against a real broker.

No engine runs on the project's machines, so the image is never built here: the wheel test
takes its steps (the product's lock with its hashes, then the product's wheel alone, in a
fresh virtual environment owned by root; a non-root user, an empty working folder, the
interpreter's environment), and these tests read the Dockerfile and .dockerignore to hold
them to the same steps. hadolint lints the file (`make lint`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.cli import build_parser
from service.settings import Settings
from tests.e2e.test_wheel import (
    IMAGE_ENV,
    LOCK_OPTIONS,
    PRODUCT_LOCK,
    REPO,
    SERVICE_GID,
    SERVICE_UID,
)
from tests.unit.test_locks import read_lock

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"
DEVKIT_PYPROJECT = ROOT / "devkit" / "pyproject.toml"

PRODUCT, DEVKIT, BUILDER = "product", "devkit", "builder"
OCI_LABELS = {"source", "version", "licenses", "title", "description"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE|(^|_)KEY($|_)", re.IGNORECASE)
SECRET_PATH = re.compile(r"(^|/)(keys|\.env[^/]*|var)(/|$)|\.(pem|p12|pfx|key|jks)$")
STORE_DRIVERS = {"postgres": ("asyncpg", "asyncpg"), "redis": ("redis", "redis.asyncio")}
"""The extras of the shared idempotency stores: the distribution each brings and the module the
store imports from it (service/idempotency/factory.py names the same extras)."""


@dataclass(frozen=True)
class Instruction:
    """One instruction: its keyword, leading --flags (RUN, COPY, ADD) and the rest; a RUN's
    --mount flags, which may repeat, apart from the others."""

    keyword: str
    flags: dict[str, str]
    arguments: str
    line: int
    mounts: tuple[str, ...] = ()

    def exec_form(self) -> list[str]:
        """The JSON (exec) form's words; AssertionError when written in shell form."""
        words = json.loads(self.arguments)
        assert isinstance(words, list), f"line {self.line}: not the exec form"
        return [str(word) for word in words]

    def pairs(self) -> dict[str, str]:
        """The NAME=value pairs of ENV, LABEL and ARG (an ARG without a default: "")."""
        result: dict[str, str] = {}
        for word in shlex.split(self.arguments):
            name, _, value = word.partition("=")
            result[name] = value
        return result

    def all_mounts(self) -> list[dict[str, str]]:
        """The options of each of a RUN's --mount flags, in order."""
        return [
            dict(part.partition("=")[::2] for part in text.split(",") if part)
            for text in self.mounts
        ]

    def mount(self) -> dict[str, str]:
        """The options of a RUN's one --mount flag (empty without one)."""
        mounts = self.all_mounts()
        assert len(mounts) <= 1, f"line {self.line}: more than one --mount"
        return mounts[0] if mounts else {}


@dataclass
class Stage:
    """One FROM and the instructions under it."""

    base: str
    name: str
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


FLAG = re.compile(r"--([a-z-]+)=(\S+)\s+")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """The instructions' lines: continuation lines joined, comments and blank lines dropped."""
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        lines.append((start, " ".join(part for part in pending if part)))
        pending = []
    assert not pending, "the file ends inside a continued line"
    return lines


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages of a Dockerfile, in order (unnamed ones named by their index)."""
    stages: list[Stage] = []
    for line, content in _logical_lines(text):
        keyword, _, rest = content.partition(" ")
        keyword = keyword.upper()
        flags: dict[str, str] = {}
        mounts: list[str] = []
        while keyword in {"RUN", "COPY", "ADD", "FROM"} and (match := FLAG.match(rest)):
            if match.group(1) == "mount":
                mounts.append(match.group(2))
            else:
                flags[match.group(1)] = match.group(2)
            rest = rest[match.end() :]
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(base=words[0], name=name, line=line))
            continue
        assert stages or keyword == "ARG", f"line {line}: {keyword} before the first FROM"
        if stages:
            instruction = Instruction(keyword, flags, rest.strip(), line, tuple(mounts))
            stages[-1].instructions.append(instruction)
    return stages


@cache
def stages() -> dict[str, Stage]:
    return {stage.name: stage for stage in parse_dockerfile(DOCKERFILE.read_text("utf-8"))}


def lineage(name: str) -> list[Stage]:
    """A stage and the stages it is built on, outermost first."""
    chain = [stages()[name]]
    while chain[0].base in stages():
        chain.insert(0, stages()[chain[0].base])
    return chain


def inherited(name: str, keyword: str) -> Instruction | None:
    """The instruction of that keyword in force in a stage (its own or a parent's)."""
    for stage in reversed(lineage(name)):
        if found := stage.last(keyword):
            return found
    return None


def inherited_pairs(name: str, keyword: str) -> dict[str, str]:
    """ENV or LABEL pairs in force in a stage, parents' first, overridden by its own."""
    result: dict[str, str] = {}
    for stage in lineage(name):
        for instruction in stage.all(keyword):
            result.update(instruction.pairs())
    return result


def stage_args(name: str) -> dict[str, str]:
    """The ARG defaults a stage declares."""
    result: dict[str, str] = {}
    for instruction in stages()[name].all("ARG"):
        result.update(instruction.pairs())
    return result


def product_workdir() -> PurePosixPath:
    """The product image's working folder (where relative paths of the settings resolve)."""
    workdir = inherited(PRODUCT, "WORKDIR")
    assert workdir is not None
    return PurePosixPath(workdir.arguments)


def venv_of(name: str) -> PurePosixPath:
    """The virtual environment a stage's `python -m venv` creates."""
    for stage in lineage(name):
        for run in stage.all("RUN"):
            if match := re.search(r"python3?(?:\.\d+)? -m venv (\S+)", run.arguments):
                return PurePosixPath(match.group(1))
    raise AssertionError(f"no `python -m venv` in {name}")


def wheel_dir(name: str) -> str:
    """The folder a stage's `pip wheel` writes into (its --wheel-dir)."""
    (run,) = [r for r in stages()[name].all("RUN") if "pip wheel" in r.arguments]
    words = shlex.split(run.arguments)
    return words[words.index("--wheel-dir") + 1]


def _project(path: Path) -> dict[str, object]:
    project = tomllib.loads(path.read_text("utf-8"))["project"]
    assert isinstance(project, dict)
    return project


def _scripts(path: Path) -> dict[str, str]:
    scripts = _project(path)["scripts"]
    assert isinstance(scripts, dict)
    return scripts


# --- .dockerignore, read as Docker reads it -------------------------------------------------------


def _pattern(text: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match plus ``**``) as a regular expression."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif text.startswith("**", i):
            out.append(".*")
            i += 2
        elif text[i] == "*":
            out.append("[^/]*")
            i += 1
        elif text[i] == "?":
            out.append("[^/]")
            i += 1
        elif text[i] == "[" and (end := text.find("]", i + 1)) > 0:
            body = text[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body[:1] in {"^", "!"} else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(text[i]))
            i += 1
    return re.compile("".join(out))


@cache
def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception, pattern) for each line of .dockerignore, in order."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text("utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        cleaned = str(PurePosixPath(line.removeprefix("!").strip().lstrip("/")))
        rules.append((exception, _pattern(cleaned)))
    return rules


def in_context(path: str) -> bool:
    """Whether a path of the repository reaches the build context: the last pattern that
    matches it or one of its parent folders decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for exception, pattern in ignore_rules():
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            excluded = not exception
    return not excluded


def tracked_files() -> list[str]:
    """The files git tracks in this checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"],  # noqa: S607 - git from PATH, as a developer runs it
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=30,
    )
    return [name for name in listed.stdout.decode().split("\0") if name]


def context_sources() -> set[str]:
    """Every path the Dockerfile copies or bind-mounts from the build context (not from
    another stage)."""
    sources: set[str] = set()
    for stage in stages().values():
        for copy in stage.all("COPY") + stage.all("ADD"):
            if "from" not in copy.flags:
                sources.update(s.rstrip("/") for s in shlex.split(copy.arguments)[:-1])
        for run in stage.all("RUN"):
            sources.update(
                mount["source"].rstrip("/")
                for mount in run.all_mounts()
                if mount.get("type") == "bind" and "from" not in mount
            )
    return sources


# --- the tests --------------------------------------------------------------------------------


def test_a_plain_build_gives_the_product() -> None:
    """The last stage, what `docker build .` builds without --target, is the product stage
    itself, unchanged; the devkit stage is built on the product."""
    last = parse_dockerfile(DOCKERFILE.read_text("utf-8"))[-1]
    assert last.base == PRODUCT
    assert last.instructions == []
    assert [stage.name for stage in lineage(DEVKIT)][-2:] == [PRODUCT, DEVKIT]


def test_every_stage_starts_from_the_same_pinned_python_slim_the_wheel_test_runs() -> None:
    """Each stage not built on another starts from one python:X.Y-slim tag (never latest),
    X.Y being the Python the wheel test runs on and one pyproject.toml allows."""
    bases = {stage.base for stage in stages().values() if stage.base not in stages()}
    assert len(bases) == 1, bases
    (base,) = bases
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert re.fullmatch(rf"python:{re.escape(version)}(\.\d+)?-slim(-[a-z]+)?", base), base
    required = _project(PYPROJECT)["requires-python"]
    assert isinstance(required, str)
    assert required.startswith(">=")
    assert tuple(map(int, version.split("."))) >= tuple(
        map(int, required.removeprefix(">=").split("."))
    )


def test_the_builder_makes_the_product_wheel_from_the_repository() -> None:
    """The builder copies the project (pyproject.toml, its README, service/ and the schemas
    service/schemas links to) and runs `pip wheel --no-deps` on it, as the wheel test does."""
    builder = stages()[BUILDER]
    assert {"pyproject.toml", "README.md", "service", "schemas"} <= context_sources()
    assert (ROOT / "service" / "schemas").resolve() == (ROOT / "schemas").resolve()
    runs = [r.arguments for r in builder.all("RUN") if "pip wheel" in r.arguments]
    assert len(runs) == 1
    words = shlex.split(runs[0])
    assert "--no-deps" in words
    assert words[-1] == "."
    workdir = builder.last("WORKDIR")
    assert workdir is not None
    copied = [c for c in builder.all("COPY") if "pyproject.toml" in c.arguments]
    assert copied
    assert shlex.split(copied[0].arguments)[-1] in {"./", workdir.arguments + "/"}


def product_install() -> Instruction:
    """The product stage's one RUN that runs pip install."""
    (install,) = [r for r in stages()[PRODUCT].all("RUN") if "pip install" in r.arguments]
    return install


def pip_commands(run: Instruction, venv: PurePosixPath) -> list[list[str]]:
    """The commands of a RUN (split at &&) that run the environment's pip, each as the words
    after that pip."""
    pip = f"{venv}/bin/pip"
    commands = [shlex.split(part) for part in run.arguments.split("&&")]
    return [words[words.index(pip) + 1 :] for words in commands if pip in words]


def test_the_product_installs_its_lock_then_only_the_wheel_into_a_root_owned_venv() -> None:
    """The product stage copies nothing from the build context: it bind-mounts the product's
    lock from the context and the builder's wheel folder, creates a virtual environment,
    installs the lock as the wheel test does (every file's hash checked, nothing built from
    source), then points_adjuster-*.whl (the wheel test's file name) alone with --no-deps,
    never the dev kit, runs pip check, and never hands the environment to the service user."""
    product = stages()[PRODUCT]
    assert product.all("COPY") == []
    assert product.all("ADD") == []
    venv = venv_of(PRODUCT)
    install = product_install()
    mounts = install.all_mounts()
    assert len(mounts) == 2
    assert {mount.get("type") for mount in mounts} == {"bind"}
    (wheels,) = [mount for mount in mounts if mount.get("from") == BUILDER]
    assert wheels.get("source") == wheel_dir(BUILDER)
    (lock,) = [mount for mount in mounts if "from" not in mount]
    assert lock.get("source") == PRODUCT_LOCK.relative_to(REPO).as_posix()
    from_lock, wheel, check = pip_commands(install, venv)
    assert from_lock[0] == "install"
    assert set(LOCK_OPTIONS) <= set(from_lock)
    assert from_lock[from_lock.index("-r") + 1] == lock["target"]
    assert [w for w in from_lock[1:] if not w.startswith("-")] == [lock["target"]]
    assert wheel[0] == "install"
    assert "--no-deps" in wheel
    assert [w for w in wheel[1:] if not w.startswith("-")] == [
        f"{wheels['target']}/points_adjuster-*.whl"
    ]
    assert check == ["check"]
    assert not [w for w in install.arguments.split() if "devkit" in w]
    assert str(inherited_pairs(PRODUCT, "ENV")["PATH"]).startswith(f"{venv}/bin:")
    for stage in stages().values():
        for run in stage.all("RUN"):
            for match in re.finditer(r"(?:chown|install)\b[^&;]*", run.arguments):
                assert str(venv) not in match.group(0), f"line {run.line}: {match.group(0)}"


def test_the_products_lock_brings_both_store_drivers() -> None:
    """The lock the product installs pins the driver of each store extra (asyncpg, redis-py:
    tests/unit/test_locks.py holds it to pyproject.toml's extras), so one image opens every
    store PA_IDEMPOTENCY__DSN can name; nothing is asked of an index beside the lock (no
    project named with extras, as the image did before it had a lock)."""
    pins = read_lock(PRODUCT_LOCK)
    assert {distribution for distribution, _ in STORE_DRIVERS.values()} <= set(pins)
    for words in pip_commands(product_install(), venv_of(PRODUCT)):
        assert not [w for w in words if w.startswith(str(_project(PYPROJECT)["name"]))], words


@pytest.mark.parametrize("extra", sorted(STORE_DRIVERS))
def test_each_store_extra_brings_its_driver_and_the_driver_imports(extra: str) -> None:
    """pyproject.toml declares each extra the image installs, with the store's driver in it;
    that driver, installed here through the same extra (the dev extra includes it), imports
    the module the store uses, from that distribution."""
    distribution, module = STORE_DRIVERS[extra]
    extras = _project(PYPROJECT)["optional-dependencies"]
    assert isinstance(extras, dict)
    names = {canonicalize_name(Requirement(entry).name) for entry in extras[extra]}
    assert distribution in names
    importlib.import_module(module)
    top = module.partition(".")[0]
    providers = importlib.metadata.packages_distributions()[top]
    assert distribution in {canonicalize_name(name) for name in providers}


def test_the_service_runs_as_the_wheel_tests_user_in_an_empty_folder_of_its_own() -> None:
    """The product and the devkit end as the numeric non-root user and group the wheel test
    runs the service as, created with those ids; the working folder (and var/, the default
    store's folder, under it) is created for that user, nothing else in it."""
    user = f"{SERVICE_UID}:{SERVICE_GID}"
    assert SERVICE_UID != 0
    assert SERVICE_GID != 0
    for name in (PRODUCT, DEVKIT):
        last_user = stages()[name].last("USER")
        assert last_user is not None, name
        assert last_user.arguments == user, name
    runs = " ".join(r.arguments for r in stages()[PRODUCT].all("RUN"))
    assert re.search(rf"groupadd [^&;]*--gid {SERVICE_GID}\b", runs)
    assert re.search(rf"useradd [^&;]*--uid {SERVICE_UID} [^&;]*--gid {SERVICE_GID}\b", runs)
    workdir = product_workdir()
    store = workdir / Settings().idempotency.sqlite_path.parent.as_posix()
    created = re.search(
        rf"install -d -o {SERVICE_UID} -g {SERVICE_GID} -m 07[0-7]0 ((?:/\S+ ?)+)", runs
    )
    assert created is not None
    assert set(created.group(1).split()) == {str(workdir), str(store)}


def test_the_entrypoint_is_the_console_script_and_the_command_is_run() -> None:
    """The product's ENTRYPOINT is ["points-adjuster"], the console script of pyproject.toml,
    and its CMD ["run"], a command of that script; the devkit's is the dev kit's script."""
    entrypoint, command = inherited(PRODUCT, "ENTRYPOINT"), inherited(PRODUCT, "CMD")
    assert entrypoint is not None
    assert command is not None
    assert entrypoint.exec_form() == ["points-adjuster"]
    assert "points-adjuster" in _scripts(PYPROJECT)
    assert command.exec_form() == ["run"]
    assert build_parser().parse_args(command.exec_form()).command == "run"
    devkit_entrypoint = inherited(DEVKIT, "ENTRYPOINT")
    assert devkit_entrypoint is not None
    assert devkit_entrypoint.exec_form() == ["points-adjuster-devkit"]
    assert "points-adjuster-devkit" in _scripts(DEVKIT_PYPROJECT)


def test_the_interpreter_environment_is_the_wheel_tests() -> None:
    """The product sets PYTHONDONTWRITEBYTECODE and PYTHONUNBUFFERED as the wheel test runs
    the service, and bakes in no setting of the service (PA_*): those belong to each
    deployment."""
    env = inherited_pairs(PRODUCT, "ENV")
    assert {name: env.get(name) for name in IMAGE_ENV} == IMAGE_ENV
    assert [name for name in env if name.startswith("PA_")] == []


def test_no_healthcheck_no_secret_and_no_key_file_in_any_stage() -> None:
    """No stage has a HEALTHCHECK (Kubernetes probes /healthz and /readyz), uses ADD, copies
    a key, .env or store path, or declares a secret-looking ARG, ENV or LABEL."""
    problems: list[str] = []
    for stage in stages().values():
        for instruction in stage.instructions:
            where = f"{stage.name}, line {instruction.line}"
            if instruction.keyword in {"HEALTHCHECK", "ADD"}:
                problems.append(f"{where}: {instruction.keyword}")
            if instruction.keyword == "COPY":
                problems.extend(
                    f"{where}: copies {source}"
                    for source in shlex.split(instruction.arguments)[:-1]
                    if SECRET_PATH.search(source)
                )
            if instruction.keyword in {"ARG", "ENV", "LABEL"}:
                problems.extend(
                    f"{where}: {name}"
                    for name in instruction.pairs()
                    if SECRET_NAME.search(name.rpartition(".")[2])
                )
    assert problems == []


def test_the_oci_labels_are_set_and_the_version_follows_pyproject() -> None:
    """The product carries the OCI labels source, version, licenses, title and description;
    the version's default and the licence are pyproject.toml's; the devkit retitles itself."""
    labels = inherited_pairs(PRODUCT, "LABEL")
    prefix = "org.opencontainers.image."
    assert {name.removeprefix(prefix) for name in labels if name.startswith(prefix)} >= OCI_LABELS
    project = _project(PYPROJECT)
    assert labels[prefix + "version"] == "${VERSION}"
    assert stage_args(PRODUCT)["VERSION"] == project["version"]
    assert labels[prefix + "licenses"] == project["license"]
    assert labels[prefix + "title"] == project["name"]
    devkit_labels = inherited_pairs(DEVKIT, "LABEL")
    assert devkit_labels[prefix + "title"] == _project(DEVKIT_PYPROJECT)["name"]


def test_the_devkit_target_adds_the_dev_kit_wheel_and_a_keys_folder() -> None:
    """The devkit stage installs the dev kit's wheel alone (--no-deps: its dependencies came
    with the product's lock), built by pip wheel --no-deps from devkit/, into the product's
    environment, and creates /keys for the service user so a
    named volume mounted there is writable by the key generator."""
    devkit = stages()[DEVKIT]
    (install,) = [r for r in devkit.all("RUN") if "pip install" in r.arguments]
    builder = stages()[install.mount()["from"]]
    (wheel,) = [r for r in builder.all("RUN") if "pip wheel" in r.arguments]
    assert install.mount()["source"] == wheel_dir(builder.name)
    assert "--no-deps" in wheel.arguments
    assert wheel.arguments.endswith("./devkit")
    assert f"{install.mount()['target']}/points_adjuster_devkit-*.whl" in install.arguments
    assert "--no-deps" in shlex.split(install.arguments)  # its dependencies: the product's lock
    assert f"{venv_of(PRODUCT)}/bin/pip" in install.arguments
    assert f"install -d -o {SERVICE_UID} -g {SERVICE_GID} -m 0700 /keys" in install.arguments


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".cache/kafka/jars/kafka.jar",
        ".git/HEAD",
        ".env",
        "keys/client-signing.p12",
        "var/idempotency.sqlite3",
        "tests/conftest.py",
        "benchmarks/bench_throughput.py",
        "docs/settings.md",
        "deploy/compose.yaml",
        "helm/Chart.yaml",
        "build/lib/service/cli.py",
        "points_adjuster.egg-info/PKG-INFO",
        "service/__pycache__/cli.cpython-311.pyc",
        "service/.env",
        "service/keys/client-decryption.key.pem",
        "devkit/pa_devkit/keys/pas-decryption.key.pem",
        "devkit/pa_devkit/var/idempotency.sqlite3",
        "devkit/build/lib/pa_devkit/cli.py",
        "devkit/points_adjuster_devkit.egg-info/PKG-INFO",
    ],
)
def test_the_build_context_leaves_out_what_a_checkout_grows(path: str) -> None:
    """Virtual environments, caches, git, .env files, keys, stores, tests, benchmarks, build
    output and byte code never reach the build context, wherever they lie."""
    assert not in_context(path)


def test_the_build_context_holds_exactly_what_the_dockerfile_copies() -> None:
    """Every tracked file under a path the Dockerfile copies reaches the build context, and
    no tracked file elsewhere does."""
    sources = context_sources()
    missing, extra = [], []
    for name in tracked_files():
        copied = any(name == s or name.startswith(s + "/") for s in sources)
        if copied and not in_context(name):
            missing.append(name)
        elif not copied and in_context(name):
            extra.append(name)
    assert missing == []
    assert extra == []
