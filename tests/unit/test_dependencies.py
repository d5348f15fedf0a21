"""Every import is declared in setup.cfg, so a fresh `pip install -e ".[test]"` runs everything.

A package that happens to be installed on the machine (from earlier work) hides a missing
declaration from every other test; this one reads the source instead of the environment.
Optional imports are allowed only with a reason (ALLOWED_UNDECLARED) or through
megatron_sffn.optional, whose extras are checked against setup.cfg here too.
"""
import ast
import configparser
import os
import re
import subprocess
import sys

import pytest

from megatron_sffn.optional import EXTRAS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETUP_CFG = os.path.join(ROOT, "setup.cfg")

# Where each folder's imports must come from: "core" is install_requires, anything else an extra.
SOURCES = {
    "megatron_sffn": ("core",),          # the package itself: optional ones go through optional.EXTRAS
    "launchers": ("core",),
    "tools": ("core",),
    "tests": ("core", "test"),           # CI installs .[test] and nothing else
    "benchmarks": ("core", "test", "plots", "hf"),
    "experiments": ("core", "test", "plots", "hf"),
}
# Import names that are not their distribution's name.
DISTRIBUTION_OF = {"yaml": "PyYAML", "megatron": "megatron-core", "PIL": "Pillow", "sklearn": "scikit-learn"}
# Imported only where they may be missing, never declared: the reason says why that is right.
ALLOWED_UNDECLARED = {
    "triton": "GPU kernels only: CUDA builds of torch bring it, and structured/kernels/dispatch.py "
              "falls back to PyTorch without it (the CPU path the tests run)",
    "orjson": "a faster JSON parser for data/records.py, which uses the standard library's json without it",
}
LOCAL = {"megatron_sffn", "tests", "tools", "launchers", "benchmarks", "experiments"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict:
    """{"core": {distribution, ...}, extra: {...}} from setup.cfg."""
    cfg = configparser.ConfigParser()
    cfg.read(SETUP_CFG)

    def names(text):
        return {normalize(re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0])
                for line in text.splitlines() if line.strip() and not line.strip().startswith("#")}
    groups = {"core": names(cfg["options"]["install_requires"])}
    groups.update({extra: names(text) for extra, text in cfg["options.extras_require"].items()})
    return groups


def top_level_imports(path: str):
    """(line, top-level name) of every absolute import in the file, nested ones included."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def repo_modules() -> set:
    """Names the repo's own files and folders import as: scripts import their siblings, and tests
    put benchmarks/ or tools/ on sys.path."""
    names = set(LOCAL)
    for folder in SOURCES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
            names.update(d for d in dirnames if os.path.isfile(os.path.join(dirpath, d, "__init__.py")))
            names.update(f[:-3] for f in filenames if f.endswith(".py"))
    return names


def third_party_imports():
    """{(folder, distribution): [file:line, ...]} over every source folder that exists."""
    found, local = {}, repo_modules()
    for folder in SOURCES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__pycache__"))]
            for filename in filenames:
                if not filename.endswith(".py"):
                    continue
                path = os.path.join(dirpath, filename)
                for line, name in top_level_imports(path):
                    if name in sys.stdlib_module_names or name == "__future__" or name in local:
                        continue
                    key = (folder, name)
                    found.setdefault(key, []).append(f"{os.path.relpath(path, ROOT)}:{line}")
    return found


def test_every_import_is_declared_for_where_it_is_used():
    groups = declared()
    missing = []
    for (folder, name), places in sorted(third_party_imports().items()):
        if name in ALLOWED_UNDECLARED:
            continue
        distribution = normalize(DISTRIBUTION_OF.get(name, name))
        allowed = set().union(*(groups.get(g, set()) for g in SOURCES[folder]))
        if folder in ("megatron_sffn", "launchers", "tools") and name in EXTRAS:
            allowed |= groups.get(EXTRAS[name][1], set())   # optional: megatron_sffn.optional names the extra
        if distribution not in allowed:
            missing.append(f"{name} (distribution {distribution}) imported at {', '.join(places[:3])} "
                           f"is not declared in {' or '.join(SOURCES[folder])} of setup.cfg")
    assert not missing, "\n".join(missing)


def test_optional_extras_exist_and_tests_get_them():
    groups = declared()
    for module, (distribution, extra) in EXTRAS.items():
        assert normalize(distribution) in groups.get(extra, set()), f"setup.cfg has no extra '{extra}' with {distribution}"
        assert normalize(distribution) in groups["test"], f"the test extra lacks {distribution}: its tests could not run"
    assert "matplotlib" in groups["plots"] and "matplotlib" in groups["test"]


def test_allow_list_holds_only_imports_that_exist_and_are_not_declared():
    groups = declared()
    everything = set().union(*groups.values())
    imported = {name for _, name in third_party_imports()}
    for name, reason in ALLOWED_UNDECLARED.items():
        assert name in imported, f"{name} is allowed undeclared but nothing imports it any more: drop it"
        assert normalize(name) not in everything, f"{name} is declared: drop it from ALLOWED_UNDECLARED"
        assert len(reason) > 20


def test_torch_is_unpinned():
    """GPU images bring their own torch build; a pin here would replace it."""
    torch_lines = [line.strip() for line in open(SETUP_CFG) if re.match(r"\s+torch\b", line)]
    assert torch_lines == ["torch"]


def test_ci_runs_the_readme_test_command_in_a_fresh_environment():
    readme = open(os.path.join(ROOT, "README.md")).read()
    command = re.search(r"Run the tests:\s*```bash\n(.+?)\n```", readme, re.S).group(1).strip()
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert command in ci.splitlines()
    assert 'python3 -m venv "$venv"' in ci and "mktemp -d" in ci


def test_a_missing_optional_package_is_one_line_naming_its_extra(tmp_path):
    """tools/convert_checkpoint.py --to hf with transformers made unimportable: exit 2, one line
    that names the hf extra, and no output folder (the check runs before any work)."""
    blocked = tmp_path / "blocked" / "transformers"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    out = tmp_path / "hf"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "blocked"), ROOT]))
    proc = subprocess.run([sys.executable, "tools/convert_checkpoint.py", "--load", str(tmp_path / "any"),
                           "--save", str(out), "--to", "hf"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith("error: --to hf needs the 'transformers' package"), line
    assert 'pip install -e ".[hf]"' in line
    assert not out.exists()


@pytest.mark.parametrize("module", sorted(EXTRAS))
def test_require_names_the_extra(module, monkeypatch):
    from megatron_sffn.optional import MissingDependency, require
    monkeypatch.setitem(sys.modules, module, None)   # the import system's own "not installed" marker
    with pytest.raises(MissingDependency, match=re.escape(f'pip install -e ".[{EXTRAS[module][1]}]"')):
        require(module, "this feature")
