"""Imports run one way (tests/import_rules.py): the project obeys the rules, and the checker catches
a forbidden import and a cycle when they are added to a copy of the tree."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.import_rules import ALLOWED, ROOTS, discover, package_of, violations


def test_the_project_has_no_forbidden_import_and_no_cycle():
    problems = violations(REPO_ROOT)
    assert problems == [], "\n".join(problems)


def test_every_module_belongs_to_a_package_of_the_rules():
    modules = discover(REPO_ROOT)
    assert len(modules) > 80  # the whole project was read, not an empty folder
    assert [m for m in modules if package_of(m) is None] == []


def test_bridge_keeps_at_most_three_modules_at_its_top_level():
    top = sorted(p.name for p in (REPO_ROOT / "bridge").glob("*.py"))
    assert len(top) <= 3, top


def test_every_subpackage_says_what_it_owns_and_what_it_may_import():
    for pkg in ALLOWED:
        init = REPO_ROOT / pkg.replace(".", "/") / "__init__.py"
        doc = init.read_text(encoding="utf-8")
        assert doc.lstrip().startswith('"""') and "May import" in doc or pkg == "bridge", pkg


def _copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for top in ROOTS:
        shutil.copytree(REPO_ROOT / top, root / top, ignore=shutil.ignore_patterns("__pycache__"))
    assert violations(root) == []  # the copy is as clean as the original
    return root


def _append(path: Path, line: str) -> int:
    text = path.read_text(encoding="utf-8")
    path.write_text(text + ("" if text.endswith("\n") else "\n") + line + "\n", encoding="utf-8")
    return text.count("\n") + (0 if text.endswith("\n") else 1) + 1


def test_a_lower_floor_importing_a_higher_one_is_named_with_its_line(tmp_path):
    root = _copy_tree(tmp_path)
    line = _append(root / "ml" / "cv.py", "from bridge.engine.pipeline import DecisionPipeline")
    problems = violations(root)
    assert problems == [f"ml/cv.py:{line}: ml.cv imports bridge.engine.pipeline: ml may not import bridge.engine "
                        "(it may import: bridge, bridge.core, bridge.data, bridge.protocol, bridge.storage, reports)"]


def test_the_ground_floor_importing_the_cli_is_caught_even_inside_a_function(tmp_path):
    root = _copy_tree(tmp_path)
    _append(root / "bridge" / "core" / "market.py", "def _late():\n    from bridge.cli import main")
    problems = violations(root)
    assert "bridge.core may not import bridge.cli" in problems[0]
    # and since the CLI reaches market.py through the pipeline, that import also closes a circle
    assert len(problems) == 2 and problems[1].startswith("import cycle: ")
    assert "bridge.core.market -> bridge.cli.main (bridge/core/market.py:" in problems[1]


def test_a_cycle_between_modules_of_one_package_is_caught(tmp_path):
    root = _copy_tree(tmp_path)
    # strategies.base imports strategies.features; closing the circle is allowed by the floors but is a cycle
    line = _append(root / "strategies" / "features.py", "import strategies.base")
    problems = violations(root)
    assert len(problems) == 1
    assert problems[0].startswith("import cycle: ")
    assert f"strategies.features -> strategies.base (strategies/features.py:{line})" in problems[0]


def test_a_relative_import_is_resolved_before_it_is_judged(tmp_path):
    root = _copy_tree(tmp_path)
    _append(root / "bridge" / "storage" / "writer.py", "from ..transport import server")
    problems = violations(root)
    assert len(problems) == 1 and "bridge.storage.writer imports bridge.transport.server" in problems[0]
