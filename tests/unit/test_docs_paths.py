"""What the docs cite exists: every benchmarks/results/... path in docs/*.md, the READMEs and the
planner's measured file (so a figure's raw file is found from the docs), every result file
docs/performance.md names by its folder or by its bare name, every script the docs name, every
suite of benchmarks/gpu/run.sh they call, and every anchor they link into docs/performance.md."""
import glob
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [
    os.path.join(ROOT, p) for p in ("README.md", "benchmarks/README.md", "benchmarks/diagnostics/README.md",
                                    "benchmarks/results/README.md")]
RESULT_PATH = re.compile(r"benchmarks/results/[\w.{},*<>/-]+")
FOLDER_PATH = re.compile(r"^(?:cpu|h100|h200)[\w-]*_\d{4}-\d\d-\d\d/[\w.{},*/-]*$")
RESULT_FILE = re.compile(r"^[\w.{},*-]+\.(?:json|txt|png|log|tar\.gz)$")
SCRIPT = re.compile(r"(?<![\w/.-])(?:benchmarks|tools|launchers|experiments)/[\w/.-]+\.(?:py|sh)\b")
SUITE_CALL = re.compile(r"benchmarks/gpu/run\.sh\s+([a-z]\w*)")


def expand(pattern: str):
    """Brace alternatives as the shell expands them: a_{x,y}.json -> a_x.json, a_y.json."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    return [p for alt in m.group(1).split(",") for p in expand(pattern[:m.start()] + alt + pattern[m.end():])]


def found(path: str) -> bool:
    return any(glob.glob(p) for p in expand(path))


def cited(path):
    return open(path, encoding="utf-8").read()


def _rel(path):
    return os.path.relpath(path, ROOT)


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_result_path_a_doc_cites_exists(doc):
    missing = []
    for path in RESULT_PATH.findall(cited(doc)):
        path = path.rstrip(".,;:")
        if "<" in path:                       # a template: benchmarks/results/<card>_<date>/
            continue
        if not found(os.path.join(ROOT, path)):
            missing.append(path)
    assert not missing, f"{_rel(doc)} cites result files that do not exist: {missing}"


def test_every_result_file_performance_md_names_exists():
    """In docs/performance.md a file is named by its card_date folder or, beside one, by its bare name."""
    text = open(os.path.join(ROOT, "docs", "performance.md"), encoding="utf-8").read()
    every_file = {os.path.basename(p) for p in glob.glob(os.path.join(RESULTS, "**", "*"), recursive=True)}
    missing, named = [], 0
    for token in re.findall(r"`([^`\s]+)`", text):
        if FOLDER_PATH.match(token):
            named += 1
            if not found(os.path.join(RESULTS, token)):
                missing.append(token)
        elif RESULT_FILE.match(token) and token != "metrics.jsonl":
            named += 1
            if not any(glob.fnmatch.fnmatch(name, pattern) for pattern in expand(token) for name in every_file):
                missing.append(token)
    assert named >= 30 and not missing, missing


def test_every_source_of_the_planners_measured_runs_exists():
    entries = json.load(open(os.path.join(RESULTS, "layout_planner_measured.json")))["entries"]
    missing = [p for e in entries for p in RESULT_PATH.findall(e.get("source") or "")
               if not found(os.path.join(ROOT, p.rstrip(".,;:")))]
    assert not missing, missing


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_script_and_suite_a_doc_names_exists(doc):
    text = re.sub(r"\s+", " ", open(doc, encoding="utf-8").read())
    text = re.sub(r"since-retired `benchmarks/\w+\.py`", "", text)   # named as gone, in git history
    scripts = set(SCRIPT.findall(text))
    missing = sorted(s for s in scripts if not os.path.exists(os.path.join(ROOT, s)))
    assert not missing, f"{_rel(doc)} names scripts that do not exist: {missing}"
    suites = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "benchmarks", "gpu", "suites", "*.sh"))}
    unknown = sorted(set(SUITE_CALL.findall(text)) - suites)
    assert not unknown, f"{_rel(doc)} calls suites run.sh does not have: {unknown}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_into_performance_md_land_on_a_heading():
    text = open(os.path.join(ROOT, "docs", "performance.md"), encoding="utf-8").read()
    anchors = {_anchor(h) for h in re.findall(r"^#+\s+(.*)$", text, re.M)}
    assert "tensor-parallelism" in anchors and "layout-planner" in anchors
    sources = DOCS + glob.glob(os.path.join(ROOT, "**", "*.py"), recursive=True)
    links = [(p, a) for p in sources for a in re.findall(r"performance\.md#([\w-]+)", open(p, encoding="utf-8").read())]
    broken = [(_rel(p), a) for p, a in links if a not in anchors]
    assert not broken, broken
