"""docs/errors.md stays true: every test a row names exists, and there are at least 30 rows."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rows():
    text = open(os.path.join(ROOT, "docs", "errors.md")).read()
    return [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| input")]


def _test_sources():
    sources = []
    for dirpath, _, filenames in os.walk(os.path.join(ROOT, "tests")):
        sources += [open(os.path.join(dirpath, f)).read() for f in filenames if f.endswith(".py")]
    return "\n".join(sources)


def test_every_named_test_exists():
    from tests.e2e.test_bad_inputs import CASES
    sources, ids = _test_sources(), {case[0] for case in CASES}
    for row in _rows():
        last = row.rstrip(" |").rsplit("|", 1)[-1].strip().strip("`")
        name = last.split("::")[-1]
        if name == "same test":        # the row above's
            continue
        if name.startswith("test_"):
            assert f"def {name}(" in sources, row
        else:
            assert name in ids, row


def test_at_least_thirty_inputs():
    assert len(_rows()) >= 30
