"""Code digests stay per kind: a rule's digest covers the wsss code its job runs, so registering or editing one
method kind changes no other kind's rules, and the demo world's code is in no digest of a run on real data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.workflow_helpers import REPO
from wsss.method_kinds import KINDS
from wsss.source_digest import package_sources, source_digest
from wsss.workflow_support import code_not_run

PACKAGE = REPO / "wsss"
SCRIPTS = sorted((REPO / "workflow_scripts").glob("*.py"))
KIND_RULE_SCRIPTS = {kind: {s.name for s in SCRIPTS if s.name.startswith(f"{kind}_")} for kind in KINDS}


def _copy(destination: Path) -> Path:
    """The package and the rule scripts, to edit without touching the checkout."""
    for name in ("wsss", "workflow_scripts"):
        shutil.copytree(REPO / name, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return destination


def _digests(root: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Rule script -> its code digest, computed as rules/common.smk computes it."""
    return {script.name: source_digest(script, root / "wsss", exclude)
            for script in sorted((root / "workflow_scripts").glob("*.py"))}


def _append(path: Path, line: str = "# an edit\n") -> None:
    path.write_text(path.read_text() + line)


def test_every_kind_has_rule_scripts_and_no_rule_runs_two_kinds_or_the_registry():
    methods = PACKAGE / "methods"
    for kind in KINDS:
        assert KIND_RULE_SCRIPTS[kind], f"no workflow_scripts/{kind}_*.py"
    for script in SCRIPTS:
        sources = package_sources(script, PACKAGE)
        kinds = {path.relative_to(methods).parts[0] for path in sources
                 if path.is_relative_to(methods) and path.parent != methods}
        assert len(kinds) <= 1, f"{script.name} runs the code of the kinds {sorted(kinds)}"
        assert PACKAGE / "method_kinds.py" not in sources, f"{script.name} depends on the kind registry"


def test_registering_a_new_kind_changes_no_digest_of_an_existing_rule(tmp_path):
    root = _copy(tmp_path)
    before = _digests(root)
    # a third kind, added as docs/architecture.md says: its own folder and rule script, and its registry line
    kind = root / "wsss" / "methods" / "probe"
    kind.mkdir()
    (kind / "__init__.py").write_text('"""A probe kind."""\n\nDEFAULTS = {"kind": "probe", "segmenter": False}\n')
    (kind / "cams.py").write_text('"""Its CAMs."""\n\nfrom wsss.cam_shards import put_cams\nfrom wsss.methods.probe import '
                                  'DEFAULTS\n')
    (root / "workflow_scripts" / "probe_cams.py").write_text("from wsss.methods.probe.cams import put_cams\n")
    registry = root / "wsss" / "method_kinds.py"
    text = registry.read_text()
    assert 'KINDS: tuple[str, ...] = ("clip_es", "semples", "excel")' in text
    registry.write_text(text.replace('("clip_es", "semples", "excel")', '("clip_es", "semples", "excel", "probe")'))
    after = _digests(root)
    assert {name: after[name] for name in before} == before
    assert "probe_cams.py" in after


def test_the_excel_kind_left_every_clip_es_and_semples_digest_as_it_was(tmp_path):
    """Digests computed with ExCEL unregistered and its code removed equal those of the checkout."""
    root = _copy(tmp_path)
    registry = root / "wsss" / "method_kinds.py"
    registry.write_text(registry.read_text().replace('("clip_es", "semples", "excel")', '("clip_es", "semples")'))
    shutil.rmtree(root / "wsss" / "methods" / "excel")
    for script in (root / "workflow_scripts").glob("excel_*.py"):
        script.unlink()
    without = _digests(root)
    with_excel = _digests(REPO)
    others = KIND_RULE_SCRIPTS["clip_es"] | KIND_RULE_SCRIPTS["semples"]
    assert others and {name: without[name] for name in others} == {name: with_excel[name] for name in others}


@pytest.mark.parametrize("kind", KINDS)
def test_editing_one_kind_reruns_only_that_kinds_rules(tmp_path, kind):
    root = _copy(tmp_path)
    before = _digests(root)
    _append(root / "wsss" / "methods" / kind / "__init__.py")  # even a comment in the kind's __init__
    after = _digests(root)
    assert {name for name in before if after[name] != before[name]} == KIND_RULE_SCRIPTS[kind]


def test_the_demo_worlds_code_is_in_no_digest_of_a_run_on_real_data(tmp_path):
    assert code_not_run("voc", "ViT-B-16") == code_not_run("coco", "ViT-B-16") == code_not_run("custom", "x") == ("demo",)
    assert code_not_run("demo", "demo") == code_not_run("demo", "ViT-B-16") == code_not_run("custom", "demo") == ()
    root = _copy(tmp_path)
    real_data, demo = _digests(root, exclude=code_not_run("voc", "ViT-B-16")), _digests(root)
    for module in sorted((root / "wsss" / "demo").glob("*.py")):
        _append(module)
    assert _digests(root, exclude=code_not_run("voc", "ViT-B-16")) == real_data, "a VOC/COCO/custom run reruns nothing"
    changed = {name for name, digest in _digests(root).items() if digest != demo[name]}
    # the demo world's own run still reruns what runs its code: generating it, its CLIP, and their users
    assert {"generate_demo_world.py", "train_demo_clip.py", "manifest.py", "text_features.py",
            "clip_es_gradcam.py", "semples_phase1.py"} <= changed
    assert not {"crf.py", "train_segmenter.py", "summary.py"} & changed


def _parse_time_modules() -> set[Path]:
    """wsss modules the Snakefile and the rule files import while parsing, with everything they import."""
    import re

    found: set[Path] = set()
    texts = [(REPO / "Snakefile").read_text()] + [p.read_text() for p in (REPO / "rules").rglob("*.smk")]
    for name in {m for text in texts for m in re.findall(r"^\s*(?:from|import) (wsss[\w.]*)", text, re.M)}:
        base = PACKAGE.joinpath(*name.split(".")[1:])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        found |= set(package_sources(module, PACKAGE))
    return found


def test_code_of_one_kind_lives_in_its_folder_and_no_kind_imports_another():
    """A module outside wsss/methods/ serves more than one kind or the shared workflow; each kind's modules
    import no other kind's folder."""
    methods = PACKAGE / "methods"
    closure = {kind: set().union(*(package_sources(path, PACKAGE) for path in (methods / kind).rglob("*.py")))
               for kind in KINDS}
    shared_scripts = [s for s in SCRIPTS if not any(s.name.startswith(f"{kind}_") for kind in KINDS)]
    shared = set().union(*(package_sources(s, PACKAGE) for s in shared_scripts)) | _parse_time_modules()
    for module in sorted(PACKAGE.rglob("*.py")):
        if module.is_relative_to(methods):
            continue
        users = sorted(kind for kind in KINDS if module in closure[kind])
        assert len(users) != 1 or module in shared, \
            f"{module.relative_to(REPO)} serves only {users[0]}: move it to wsss/methods/{users[0]}/"
    for kind in KINDS:
        foreign = sorted(str(p.relative_to(methods)) for p in closure[kind]
                         if p.is_relative_to(methods) and p.parent != methods and p.relative_to(methods).parts[0] != kind)
        assert not foreign, f"kind {kind} imports another kind's code: {foreign}"
