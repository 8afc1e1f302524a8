"""The pinned environments agree with each other and with the package's declared dependencies.

requirements.lock holds the runtime packages (what a workflow job imports), requirements-dev.lock the
test/lint tools installed on top of it, and envs/wsss.yaml (the `--sdm conda` environment) pins exactly
the runtime lock without referring to any file, since Snakemake copies it into .snakemake/conda/.
The runtime closure is computed from the installed distributions' metadata (Requires-Dist) of the
interpreter running the tests, starting from pyproject's dependencies plus the `cluster` extra.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
CONDA_ENV = ROOT / "envs" / "wsss.yaml"
DEV_TOOLS = ("pytest", "snakefmt", "black", "snakedeploy")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def parse_pins(lines: list[str], where: str) -> dict[str, tuple[str, str]]:
    """Canonical name -> (name as written, version); every entry must be a plain `name==version`."""
    pins: dict[str, tuple[str, str]] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{where}: {line!r} is not a plain `name==version` pin"
        name, version = match.groups()
        key = canonicalize_name(name)
        assert key not in pins, f"{where}: {name} is pinned twice"
        pins[key] = (name, version)
    return pins


def versions(pins: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {name: version for name, (_, version) in pins.items()}


def lock_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def runtime_roots() -> list[Requirement]:
    project = pyproject()["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["cluster"]]


def closure(roots: list[Requirement]) -> set[str]:
    """Canonical names of the roots and everything they require, transitively, per installed metadata.

    Markers are evaluated for the running interpreter; an `extra == ...` marker holds only for the
    extras that the requiring edge asked for.
    """
    names: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    stack = [r for r in roots if r.marker is None or r.marker.evaluate({"extra": ""})]
    while stack:
        req = stack.pop()
        key = (canonicalize_name(req.name), frozenset(canonicalize_name(e) for e in req.extras))
        if key in visited:
            continue
        visited.add(key)
        names.add(key[0])
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{req.name} (needed by the runtime closure) is not installed; run `make .venv/.installed`")
        environments = [{"extra": ""}] + [{"extra": e} for e in key[1]]
        for spec in dist.requires or []:
            dep = Requirement(spec)
            if dep.marker is None or any(dep.marker.evaluate(env) for env in environments):
                stack.append(dep)
    return names


@pytest.fixture(scope="module")
def runtime_pins() -> dict[str, tuple[str, str]]:
    return parse_pins(lock_lines(RUNTIME_LOCK), RUNTIME_LOCK.name)


@pytest.fixture(scope="module")
def dev_pins() -> dict[str, tuple[str, str]]:
    return parse_pins(lock_lines(DEV_LOCK), DEV_LOCK.name)


@pytest.fixture(scope="module")
def runtime_closure() -> set[str]:
    return closure(runtime_roots())


def conda_pip_entries() -> list[str]:
    env = yaml.safe_load(CONDA_ENV.read_text())
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, f"{CONDA_ENV.name} must have exactly one pip section"
    return [str(entry) for entry in sections[0]]


def test_conda_env_pins_exactly_the_runtime_lock(runtime_pins):
    entries = conda_pip_entries()
    relative = [e for e in entries if e.lstrip().startswith("-") or ".." in e or "/" in e]
    assert not relative, f"{CONDA_ENV.name} refers to paths, which break once Snakemake copies it: {relative}"
    env_pins = parse_pins(entries, f"{CONDA_ENV.name} pip section")
    assert versions(env_pins) == versions(runtime_pins)


def test_conda_env_is_python_311_with_pip_and_compiler():
    conda = [d for d in yaml.safe_load(CONDA_ENV.read_text())["dependencies"] if isinstance(d, str)]
    assert {"python=3.11", "pip", "gxx_linux-64"} <= {d.split("#")[0].strip() for d in conda}


@pytest.mark.parametrize("path", [RUNTIME_LOCK, DEV_LOCK], ids=lambda p: p.name)
def test_locks_sorted_case_insensitively(path):
    names = [name for name, _ in parse_pins(lock_lines(path), path.name).values()]
    assert names == sorted(names, key=str.lower)


def test_dev_tools_only_in_dev_lock(runtime_pins, dev_pins):
    for tool in DEV_TOOLS:
        assert tool not in runtime_pins, f"{tool} is a development tool, not a runtime package"
        assert tool in dev_pins, f"{tool} is not pinned in {DEV_LOCK.name}"
    assert not runtime_pins.keys() & dev_pins.keys(), "a package is pinned in both locks"


def test_dev_extra_matches_dev_lock(dev_pins):
    extra = [Requirement(r) for r in pyproject()["project"]["optional-dependencies"]["dev"]]
    assert {canonicalize_name(r.name) for r in extra} == set(DEV_TOOLS)
    for req in extra:
        pinned = dev_pins[canonicalize_name(req.name)][1]
        message = f"dev extra {req} does not pin {DEV_LOCK.name}'s {req.name}=={pinned}"
        assert req.specifier and req.specifier.contains(pinned, prereleases=True), message


def test_declared_dependencies_pinned_in_runtime_lock(runtime_pins):
    for req in runtime_roots():
        key = canonicalize_name(req.name)
        assert key in runtime_pins, f"{req} is declared in pyproject but not pinned in {RUNTIME_LOCK.name}"
        pinned = runtime_pins[key][1]
        assert req.specifier.contains(pinned, prereleases=True), f"{RUNTIME_LOCK.name} pins {pinned}, outside {req}"


def test_runtime_closure_is_in_runtime_lock(runtime_pins, runtime_closure):
    missing = sorted(runtime_closure - runtime_pins.keys())
    assert not missing, f"runtime dependencies not pinned in {RUNTIME_LOCK.name}: {missing}"


def test_dev_lock_is_outside_runtime_closure(dev_pins, runtime_closure):
    runtime_in_dev = sorted(dev_pins.keys() & runtime_closure)
    message = f"{DEV_LOCK.name} pins runtime dependencies (move them to {RUNTIME_LOCK.name}): {runtime_in_dev}"
    assert not runtime_in_dev, message


def test_licence_and_citation_name_this_software_and_the_method_papers():
    import wsss

    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "MIT"
    assert citation["version"] == wsss.__version__, "CITATION.cff follows the package version"
    papers = {ident["value"] for ref in citation["references"] for ident in ref["identifiers"]}
    assert papers == {"arXiv:2212.09506", "arXiv:2401.11791", "arXiv:2503.20826"}  # CLIP-ES, SemPLeS, ExCEL
