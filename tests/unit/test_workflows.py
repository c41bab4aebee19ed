"""The GitHub Actions workflows (.github/workflows/) are valid before GitHub sees them.

Three checks, each shown to fail on a broken workflow written to a temporary folder:

- GitHub's workflow schema (SchemaStore's, vendored in check-jsonschema, so no network): unknown
  keys, wrong types, unknown events, a step with both ``uses`` and ``run``, YAML that does not parse;
- ``${{ }}`` expressions, which the schema sees as plain strings: each is closed, and names only
  GitHub's contexts and functions (``if:`` values too, which are expressions without ``${{ }}``);
- the bash ``run:`` scripts, through shellcheck when it is installed (Debian: shellcheck), with the
  expressions blanked out and the exclusions actionlint uses for such scripts.

actionlint would do all of this and more (which context each key may use, action inputs), but it
cannot be installed offline from PyPI (see the dev extra in pyproject.toml).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO_ROOT / ".github" / "workflows"

# https://docs.github.com/actions/learn-github-actions/contexts and .../expressions
CONTEXTS = {"github", "env", "vars", "job", "jobs", "steps", "runner", "secrets", "strategy", "matrix", "needs",
            "inputs"}
LITERALS = {"true", "false", "null"}
FUNCTIONS = {"contains", "startswith", "endswith", "format", "join", "tojson", "fromjson", "hashfiles",
             "success", "always", "cancelled", "failure", "case"}  # matched case-insensitively, as GitHub does
# What actionlint excludes when it runs shellcheck on run: scripts: sourced files it cannot see, variables
# that GitHub sets, and the constant tests that blanked-out expressions leave behind.
SHELLCHECK_EXCLUDE = "SC1091,SC2043,SC2050,SC2154,SC2157,SC2194"

_QUOTED = re.compile(r"'(?:[^']|'')*'")
_NAME = re.compile(r"(?<![\w.\-])([A-Za-z_][\w\-]*)(\s*\()?")
_EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.S)


def workflow_files(folder: Path = WORKFLOWS) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".yml", ".yaml")) if folder.is_dir() else []


def _load(path: Path) -> Any:
    from ruamel.yaml import YAML  # check-jsonschema's YAML parser (YAML 1.2: `on` stays a string)
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    except YAMLError:
        return None  # the schema check reports the parse error


def schema_problems(path: Path) -> list[str]:
    """Errors of ``path`` against GitHub's workflow schema, one line each: for each error, the deepest of
    the reasons the validator gives (a job matches none of the schema's job shapes *because* its
    ``runs-on`` is a number)."""
    cmd = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
           "--output-format", "json", "--verbose", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"check-jsonschema gave no report (exit {proc.returncode}; it comes with "
                             f"`pip install -e .[dev]`):\n{proc.stdout}{proc.stderr}") from None
    problems = [f"{path.name}: {e['message']}" for e in report.get("parse_errors", [])]
    for e in report.get("errors", []):
        reasons = e.get("sub_errors") or [e]
        depth = max(len(r["path"]) for r in reasons)
        for r in dict.fromkeys((r["path"], r["message"]) for r in reasons if len(r["path"]) == depth):
            problems.append(f"{path.name}: {r[0]}: {_short(r[1])}")
    if proc.returncode != 0 and not problems:
        raise AssertionError(f"check-jsonschema failed without naming a problem:\n{proc.stdout}{proc.stderr}")
    return problems


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[:limit] + "..."


def _strings(node: Any, where: str = "") -> Iterator[tuple[str, str, str]]:
    """(place, key, string) for every string value in the loaded workflow."""
    if isinstance(node, dict):
        for key, value in node.items():
            place = f"{where}.{key}" if where else str(key)
            if isinstance(value, str):
                yield place, str(key), value
            else:
                yield from _strings(value, place)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, str):
                yield f"{where}[{i}]", "", value
            else:
                yield from _strings(value, f"{where}[{i}]")


def _names_problems(expression: str) -> list[str]:
    problems = []
    for m in _NAME.finditer(_QUOTED.sub("''", expression)):
        name, call = m.group(1), m.group(2)
        if call:
            if name.lower() not in FUNCTIONS:
                problems.append(f"unknown function {name}()")
        elif name.lower() not in CONTEXTS | LITERALS:
            problems.append(f"{name!r} is not a context")
    return problems


def expression_problems(path: Path) -> list[str]:
    """Unclosed ``${{`` and names that are neither a context, a literal nor a function."""
    workflow = _load(path)
    problems = []
    for place, key, text in _strings(workflow):
        if key == "if" and "${{" not in text:
            problems += [f"{path.name}: {place}: {p}" for p in _names_problems(text)]
            continue
        for m in _EXPRESSION.finditer(text):
            problems += [f"{path.name}: {place}: {p} in ${{{{{m.group(1)}}}}}" for p in _names_problems(m.group(1))]
        if "${{" in _EXPRESSION.sub("", text):
            problems.append(f"{path.name}: {place}: a ${{{{ is not closed by }}}} in {text.strip()!r}")
    return problems


def bash_scripts(workflow: Any) -> Iterator[tuple[str, str]]:
    """(place, script) of each run: step that GitHub runs with bash or sh."""
    if not isinstance(workflow, dict):
        return
    top_shell = ((workflow.get("defaults") or {}).get("run") or {}).get("shell")
    for job_id, job in (workflow.get("jobs") or {}).items():
        job_shell = ((job.get("defaults") or {}).get("run") or {}).get("shell") or top_shell
        windows = "windows" in str(job.get("runs-on", "")).lower()
        for i, step in enumerate(job.get("steps") or []):
            if not isinstance(step, dict) or not isinstance(step.get("run"), str):
                continue
            shell = str(step.get("shell") or job_shell or ("pwsh" if windows else "bash"))
            if shell.split()[0] in ("bash", "sh"):
                yield f"jobs.{job_id}.steps[{i}]", step["run"]


def shellcheck_problems(path: Path, shellcheck: str) -> list[str]:
    problems = []
    for place, script in bash_scripts(_load(path)):
        # blanked like actionlint: same length, so shellcheck's columns still point into the workflow's line
        blanked = _EXPRESSION.sub(lambda m: "_" * len(m.group(0)), script)
        proc = subprocess.run([shellcheck, "--norc", "--shell=bash", "--format=gcc", f"--exclude={SHELLCHECK_EXCLUDE}",
                               "-"], input=blanked, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            problems += [f"{path.name}: {place}: {line.removeprefix('-:')}"
                         for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return problems


def _shellcheck() -> str:
    found = shutil.which("shellcheck")
    if found is None:
        pytest.skip("shellcheck is not installed (Debian/Ubuntu: apt-get install shellcheck)")
    return found


# --------------------------------------------------------------------------- the repository's workflows

WORKFLOW_NAMES = [p.name for p in workflow_files()]


def test_the_repository_has_workflows() -> None:
    # without it, a moved or deleted folder would pass every check below by having nothing to check
    assert WORKFLOW_NAMES, f"no workflow in {WORKFLOWS}"


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflow_matches_the_schema_and_its_expressions_are_well_formed(name: str) -> None:
    problems = schema_problems(WORKFLOWS / name) + expression_problems(WORKFLOWS / name)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflow_bash_scripts_pass_shellcheck(name: str) -> None:
    problems = shellcheck_problems(WORKFLOWS / name, _shellcheck())
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- the checks can fail

GOOD = """\
name: good
on: push
jobs:
  test:
    runs-on: ${{ matrix.os }}
    strategy:
      matrix:
        os: [ubuntu-latest]
    steps:
      - uses: actions/checkout@v4
      - if: ${{ !cancelled() }}
        run: echo "${{ github.sha }}" > "$RUNNER_TEMP/sha"
"""

BROKEN = {
    "an unknown job key": ("    steps:", "    stepz:", "$.jobs.test: Additional properties are not allowed ('stepz'"),
    "a runs-on that is not a string": ("runs-on: ${{ matrix.os }}", "runs-on: 42",
                                       "$.jobs.test['runs-on']: 42 is not of type 'string'"),
    "an unclosed runs-on expression": ("runs-on: ${{ matrix.os }}", "runs-on: ${{ matrix.os", "not closed"),
    "a runs-on expression naming no context": ("${{ matrix.os }}", "${{ matrx.os }}", "'matrx' is not a context"),
    "an unknown function": ("!cancelled()", "!canceled()", "canceled()"),
    "an unknown event": ("on: push", "on: pushh", "$.on: 'pushh' is not one of"),
    "a step with both uses and run": ("uses: actions/checkout@v4", "uses: actions/checkout@v4\n        run: ls",
                                      "$.jobs.test.steps[0]: "),
    "YAML that does not parse": ("    runs-on:", "  runs-on:\n     - [", "Failed to parse"),
}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "workflow.yml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_sample_workflow_passes(tmp_path: Path) -> None:
    # the broken samples below differ from this one by their error alone
    path = _write(tmp_path, GOOD)
    assert schema_problems(path) + expression_problems(path) == []


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_workflow_is_reported(tmp_path: Path, case: str) -> None:
    old, new, expected = BROKEN[case]
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    problems = schema_problems(path) + expression_problems(path)
    assert any(expected in p for p in problems), f"{case}: {expected!r} not in {problems}"


def test_a_bad_bash_script_is_reported(tmp_path: Path) -> None:
    shellcheck = _shellcheck()
    assert shellcheck_problems(_write(tmp_path, GOOD), shellcheck) == []
    broken = GOOD.replace('run: echo "${{ github.sha }}" > "$RUNNER_TEMP/sha"',
                          "run: for f in $(ls *.txt); do cat $f; done")
    problems = shellcheck_problems(_write(tmp_path, broken), shellcheck)
    assert any("SC2045" in p for p in problems), problems  # iterating over ls output


def test_only_bash_scripts_go_to_shellcheck() -> None:
    workflow = {"jobs": {
        "win": {"runs-on": "windows-latest", "steps": [{"run": "Get-ChildItem"}, {"shell": "bash", "run": "ls"}]},
        "lin": {"runs-on": "ubuntu-latest", "defaults": {"run": {"shell": "pwsh"}},
                "steps": [{"run": "Get-Item ."}, {"shell": "bash -l {0}", "run": "pwd"},
                          {"uses": "actions/checkout@v4"}]},
    }}
    assert list(bash_scripts(workflow)) == [("jobs.win.steps[1]", "ls"), ("jobs.lin.steps[1]", "pwd")]
