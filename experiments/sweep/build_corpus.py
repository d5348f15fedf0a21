#!/usr/bin/env python
"""Rebuild an English prose corpus, as jsonl.gz, from Debian packages (nothing but the Debian
archive is needed; `apt-get download` fetches the .deb files, `dpkg -x` unpacks them).

    python experiments/sweep/build_corpus.py --preset embedded --output corpus.jsonl.gz   # the bundled corpus
    python experiments/sweep/build_corpus.py --preset large --output large.jsonl.gz       # the 50M-token one
    python experiments/sweep/build_corpus.py --list                                       # sources and licences

Each record is {"text", "title", "source", "licence"}; one record per chapter, dictionary
entry or documentation page. Run `apt-get update` once first if `apt-get download` finds
nothing. Re-running gives the same bytes for the same package versions.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import html
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Tuple

Document = Tuple[str, str]          # (title, text)


@dataclass
class CorpusSource:
    name: str
    packages: List[str]
    licence: str
    description: str
    extract: Callable[[str], Iterator[Document]]   # unpacked root folder -> documents


# ---------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------
def fetch_packages(packages: List[str], work_dir: str) -> str:
    """Download and unpack the packages into work_dir/root; returns that folder."""
    debs = os.path.join(work_dir, "debs")
    root = os.path.join(work_dir, "root")
    os.makedirs(debs, exist_ok=True)
    os.makedirs(root, exist_ok=True)
    for package in packages:
        if not glob.glob(os.path.join(debs, f"{package}_*.deb")):
            result = subprocess.run(["apt-get", "download", package], cwd=debs,
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"error: apt-get download {package} failed (run `apt-get update` "
                                 f"first?): {result.stderr.strip()}")
        deb = sorted(glob.glob(os.path.join(debs, f"{package}_*.deb")))[-1]
        subprocess.run(["dpkg", "-x", deb, root], check=True)
    return root


# ---------------------------------------------------------------------------------------
# Extractors
# ---------------------------------------------------------------------------------------
def _paragraphs(text: str) -> str:
    """Normalise line endings and runs of blank lines; keep paragraphs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def extract_kjv(root: str) -> Iterator[Document]:
    """King James Bible, one document per chapter (decoded with the package's own reader)."""
    binary = os.path.join(root, "usr", "bin", "bible")
    data_dir = os.path.join(root, "usr", "lib")
    out = subprocess.run([binary, "-p", data_dir, "-l100000", "Gen1:1-Rev22:21"],
                         capture_output=True, text=True, check=True).stdout
    title, verses = None, []
    for line in out.split("\n"):
        verse = re.match(r"^\s+\d+ (.*)$", line)
        if verse:
            verses.append(verse.group(1).strip())
        elif line.strip():
            if title and verses:
                yield title, f"{title}\n\n" + "\n".join(verses)
            title, verses = line.strip(), []
    if title and verses:
        yield title, f"{title}\n\n" + "\n".join(verses)


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 64 + _B64.index(ch)
    return value


def dictd_entries(index_path: str, dict_path: str) -> Iterator[Document]:
    """Entries of a dictd database (.index + gzip-compatible .dict.dz), in index order,
    each entry once even when several headwords point at it."""
    with gzip.open(dict_path, "rb") as stream:
        body = stream.read()
    seen = set()
    with open(index_path, encoding="utf-8", errors="replace") as index:
        for line in index:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or parts[0].startswith("00database") or parts[0].startswith("00-database"):
                continue
            start, length = _dictd_number(parts[1]), _dictd_number(parts[2])
            if (start, length) in seen:
                continue
            seen.add((start, length))
            text = body[start:start + length].decode("utf-8", errors="replace")
            text = _paragraphs(re.sub(r"[{}]", "", text))   # drop dictd cross-reference braces
            if len(text) > 40:
                yield parts[0], text


def extract_dictd(name: str) -> Callable[[str], Iterator[Document]]:
    def extract(root: str) -> Iterator[Document]:
        base = os.path.join(root, "usr", "share", "dictd", name)
        yield from dictd_entries(base + ".index", base + ".dict.dz")
    return extract


class _HTMLText(html.parser.HTMLParser):
    """Visible prose of an HTML (or Mallard XML) page: drops scripts, styles, code blocks,
    tables and navigation (nav elements, role="navigation", Sphinx/DocBook nav bars)."""
    SKIP = {"script", "style", "pre", "nav", "head", "title", "table", "header", "footer",
            "screen", "code:block", "synopsis"}
    NAV_CLASSES = {"related", "sphinxsidebar", "footer", "navheader", "navfooter", "sidebar",
                   "top-nav", "subNavList", "sub-title", "header", "menu"}
    BLOCK = {"p", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "br", "dt", "dd", "tr",
             "blockquote", "section", "article", "ul", "ol", "dl", "title", "item", "note"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: List[str] = []
        self.skip_tag, self.skip_depth = None, 0

    def _is_nav(self, tag, attrs) -> bool:
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        return tag in self.SKIP or attrs.get("role") == "navigation" or bool(classes & self.NAV_CLASSES)

    def handle_starttag(self, tag, attrs):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        if self._is_nav(tag, attrs):
            self.skip_tag, self.skip_depth = tag, 1
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_startendtag(self, tag, attrs):
        if self.skip_tag is None and tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if self.skip_tag is None:
            self.parts.append(data)

    def text(self) -> str:
        text = "".join(self.parts)
        lines = [re.sub(r"\s+", " ", para).strip() for para in re.split(r"\n\s*\n", text)]
        return "\n\n".join(line for line in lines if line)


def html_to_text(markup: str) -> str:
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    return parser.text()


def _prose_ratio(text: str) -> float:
    letters = sum(ch.isalpha() or ch.isspace() for ch in text)
    return letters / max(1, len(text))


def _files(root: str, subdirs, pattern: str, exclude=()) -> List[Tuple[str, str]]:
    found = []
    for subdir in subdirs:
        base = os.path.join(root, subdir)
        for path in sorted(glob.glob(os.path.join(base, "**", pattern), recursive=True)):
            rel = os.path.relpath(path, root)
            if os.path.isfile(path) and not os.path.islink(path) and not any(x in rel for x in exclude):
                found.append((rel, path))
    return found


def extract_html_tree(*subdirs: str, pattern: str = "*.htm*", exclude=(), min_chars: int = 500
                      ) -> Callable[[str], Iterator[Document]]:
    """Every page under root/<subdir> (gzipped too) as one document of visible prose;
    pages that are mostly symbols (API listings, tables of contents) are left out."""
    def extract(root: str) -> Iterator[Document]:
        for rel, page in _files(root, subdirs, pattern, exclude):
            opener = gzip.open if page.endswith(".gz") else open
            with opener(page, "rb") as stream:
                markup = stream.read().decode("utf-8", errors="replace")
            text = html_to_text(markup)
            if len(text) >= min_chars and _prose_ratio(text) > 0.85:
                yield rel, text
    return extract


def extract_text_tree(subdir: str, pattern: str, min_chars: int = 500
                      ) -> Callable[[str], Iterator[Document]]:
    """Plain-text (or reStructuredText) files under root/subdir, code blocks dropped."""
    def extract(root: str) -> Iterator[Document]:
        base = os.path.join(root, subdir)
        files = sorted(p for p in glob.glob(os.path.join(base, "**", pattern), recursive=True)
                       if os.path.isfile(p) and not os.path.islink(p))
        for path in files:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rb") as stream:
                text = stream.read().decode("utf-8", errors="replace")
            text = _drop_indented_code(text)
            if len(text) >= min_chars and _prose_ratio(text) > 0.85:
                yield os.path.relpath(path, base), text
    return extract


def _drop_indented_code(text: str) -> str:
    """Keep the prose of plain text / reStructuredText: drop literal blocks (indented 4+),
    directives and comments ('.. '), and heading underlines."""
    kept = []
    for line in text.replace("\t", "    ").split("\n"):
        stripped = line.strip()
        if line.startswith("    ") or stripped.startswith(".. ") or stripped.startswith(":"):
            continue
        if stripped and len(set(stripped)) == 1 and stripped[0] in "=-~^*#+`'\"":
            continue
        kept.append(line)
    return _paragraphs("\n".join(kept))


def _pod_markup(text: str) -> str:
    """C<code>, L<link|target>, B<bold> ... -> their text."""
    text = re.sub(r"[A-Z]<<+\s*(.*?)\s*>>+", r"\1", text, flags=re.S)
    for _ in range(3):
        text = re.sub(r"[A-Z]<([^<>]*)>", lambda m: m.group(1).split("|")[0], text)
    return text


def extract_pod_tree(subdir: str, min_chars: int = 500) -> Callable[[str], Iterator[Document]]:
    """Perl's .pod documentation as prose: POD commands and verbatim (code) blocks dropped."""
    def extract(root: str) -> Iterator[Document]:
        base = os.path.join(root, subdir)
        for path in sorted(glob.glob(os.path.join(base, "**", "*.pod"), recursive=True)):
            with open(path, "rb") as stream:
                pod = stream.read().decode("utf-8", errors="replace")
            paras = []
            for para in re.split(r"\n\s*\n", pod):
                if not para.strip() or para[0] in " \t":
                    continue                              # verbatim block = code
                if para.startswith("="):
                    heading = re.match(r"=head\d\s+(.*)", para)
                    if heading:
                        paras.append(_pod_markup(heading.group(1).strip()))
                    continue
                paras.append(re.sub(r"\s+", " ", _pod_markup(para)).strip())
            text = "\n\n".join(paras)
            if len(text) >= min_chars and _prose_ratio(text) > 0.85:
                yield os.path.relpath(path, base), text
    return extract


# ---------------------------------------------------------------------------------------
# The sources, and the presets
# ---------------------------------------------------------------------------------------
SOURCES: Dict[str, CorpusSource] = {s.name: s for s in [
    CorpusSource("kjv", ["bible-kjv-text", "bible-kjv"], "public domain (text of 1611); package GPL-2+",
                 "The King James Version of the Bible, one document per chapter", extract_kjv),
    CorpusSource("devil", ["dict-devil"], "public domain",
                 "Ambrose Bierce, The Devil's Dictionary (1911), one document per entry",
                 extract_dictd("devil")),
    CorpusSource("jargon", ["dict-jargon"], "public domain",
                 "The Jargon File 4.4.7, one document per entry", extract_dictd("jargon")),
    CorpusSource("gcide", ["dict-gcide"], "GPL-3+",
                 "GNU Collaborative International Dictionary of English (Webster's 1913 based), "
                 "one document per entry", extract_dictd("gcide")),
    CorpusSource("foldoc", ["dict-foldoc"], "GFDL-1.1+",
                 "The Free On-line Dictionary of Computing, one document per entry",
                 extract_dictd("foldoc")),
    CorpusSource("wordnet", ["dict-wn"], "WordNet 3.0 licence (BSD-like)",
                 "WordNet 3.0 glosses and examples, one document per headword", extract_dictd("wn")),
    CorpusSource("python-docs", ["python3.11-doc"], "PSF-2.0",
                 "The Python 3.11 documentation, prose of each page (code blocks dropped)",
                 extract_html_tree("usr/share/doc/python3.11/html", exclude=("_sources/",))),
    CorpusSource("perl-docs", ["perl-doc"], "Artistic or GPL-1+",
                 "Perl's manual pages (perlfaq, perltoc, ...), prose only",
                 extract_pod_tree("usr/share/perl")),
    CorpusSource("debian-handbook", ["debian-handbook"], "GPL-2+ or CC-BY-SA-3.0",
                 "The Debian Administrator's Handbook (English)",
                 extract_html_tree("usr/share/doc/debian-handbook/html/en-US")),
    CorpusSource("debian-reference", ["debian-reference-en", "debian-reference-common"], "GPL-2+",
                 "Debian Reference (English)",
                 extract_html_tree("usr/share/debian-reference", pattern="*.en.html")),
    CorpusSource("postgresql-docs", ["postgresql-doc-15"], "PostgreSQL licence",
                 "The PostgreSQL 15 manual, prose of each page",
                 extract_html_tree("usr/share/doc/postgresql-doc-15/html")),
    CorpusSource("linux-docs", ["linux-doc-6.1"], "GPL-2.0",
                 "The Linux kernel's documentation (6.1), prose of each .rst file",
                 extract_text_tree("usr/share/doc/linux-doc-6.1/Documentation", "*.rst.gz")),
    CorpusSource("java-docs", ["openjdk-17-doc"], "GPL-2 with Classpath exception",
                 "OpenJDK 17 API documentation, prose of each class page",
                 extract_html_tree("usr/share/doc/openjdk-17-jre-headless/api",
                                   exclude=("class-use/", "-summary.html", "-tree.html", "index-files/"))),
    CorpusSource("rust-docs", ["rust-doc"], "MIT or Apache-2.0",
                 "The Rust book, reference, nomicon, Rust by Example and standard library docs",
                 extract_html_tree(*[f"usr/share/doc/rust-doc/html/{d}" for d in
                                     ("book", "reference", "nomicon", "edition-guide", "rust-by-example",
                                      "embedded-book", "rustc", "rustdoc", "unstable-book", "std")],
                                   exclude=("/print.html",))),
    CorpusSource("erlang-docs", ["erlang-doc"], "Apache-2.0",
                 "Erlang/OTP documentation: user guides and reference manuals",
                 extract_html_tree("usr/share/doc/erlang-doc", exclude=("/java/",))),
    CorpusSource("django-docs", ["python-django-doc"], "BSD-3-Clause",
                 "The Django documentation", extract_html_tree("usr/share/doc/python-django-doc/html",
                                                               exclude=("_modules/", "_sources/"))),
    CorpusSource("apache-docs", ["apache2-doc"], "Apache-2.0",
                 "The Apache HTTP Server manual (English pages)",
                 extract_html_tree("usr/share/doc/apache2-doc/manual/en")),
    CorpusSource("sqlite-docs", ["sqlite3-doc"], "public domain",
                 "The SQLite documentation", extract_html_tree("usr/share/doc/sqlite3")),
    CorpusSource("gnome-help", ["gnome-user-docs"], "CC-BY-SA-3.0",
                 "The GNOME desktop help (English, Mallard pages)",
                 extract_html_tree("usr/share/help/C", pattern="*.page", min_chars=300)),
    CorpusSource("git-docs", ["git-doc"], "GPL-2",
                 "Git's manual pages, user manual and guides (HTML)",
                 extract_html_tree("usr/share/doc/git-doc")),
    CorpusSource("octave-docs", ["octave-doc"], "GPL-3+",
                 "The GNU Octave manual (HTML)", extract_html_tree("usr/share/doc/octave")),
    CorpusSource("pandas-docs", ["python-pandas-doc"], "BSD-3-Clause",
                 "The pandas documentation: user guide, API reference prose",
                 extract_html_tree("usr/share/doc/python-pandas-doc/html", exclude=("_modules/", "_sources/"))),
    CorpusSource("scipy-docs", ["python-scipy-doc"], "BSD-3-Clause",
                 "The SciPy documentation: tutorials and reference prose",
                 extract_html_tree("usr/share/doc/python-scipy-doc/html", exclude=("_modules/", "_sources/"))),
    CorpusSource("sqlalchemy-docs", ["python-sqlalchemy-doc"], "MIT",
                 "The SQLAlchemy documentation",
                 extract_html_tree("usr/share/doc/python-sqlalchemy-doc/html", exclude=("_modules/", "_sources/"))),
    CorpusSource("sphinx-docs", ["sphinx-doc"], "BSD-2-Clause",
                 "The Sphinx documentation",
                 extract_html_tree("usr/share/doc/sphinx-doc/html", exclude=("_modules/", "_sources/"))),
    CorpusSource("cmake-docs", ["cmake-doc"], "BSD-3-Clause",
                 "The CMake manuals", extract_html_tree("usr/share/doc/cmake-data/html", exclude=("_sources/",))),
    CorpusSource("zsh-docs", ["zsh-doc"], "Zsh licence (MIT-like)",
                 "The Zsh manual", extract_html_tree("usr/share/doc/zsh-common/html")),
    CorpusSource("bind9-docs", ["bind9-doc"], "MPL-2.0",
                 "The BIND 9 Administrator Reference Manual", extract_html_tree("usr/share/doc/bind9-doc/arm")),
    CorpusSource("fontforge-docs", ["fontforge-doc"], "GPL-3+ and BSD-3-Clause",
                 "The FontForge manual (English)", extract_html_tree("usr/share/doc/fontforge", exclude=("/ja/",))),
    CorpusSource("kicad-docs", ["kicad-doc-en"], "GPL-3+ or CC-BY-3.0",
                 "The KiCad manuals (English)", extract_html_tree("usr/share/doc/kicad/help/en")),
    CorpusSource("lilypond-docs", ["lilypond-doc-html"], "GFDL-1.3+",
                 "The LilyPond manuals (English pages)",
                 extract_html_tree("usr/share/doc/lilypond/html", exclude=(".ca.html", ".cs.html", ".de.html", ".es.html", ".fr.html", ".hu.html", ".it.html", ".ja.html", ".nl.html", ".pt.html", ".zh.html"))),
]}

PRESETS = {
    "embedded": ["kjv", "devil", "jargon"],
    "large": ["kjv", "devil", "jargon", "gcide", "foldoc", "wordnet", "python-docs", "perl-docs", "debian-handbook",
              "debian-reference", "postgresql-docs", "linux-docs", "java-docs", "rust-docs",
              "erlang-docs", "django-docs", "apache-docs", "sqlite-docs", "gnome-help", "git-docs",
              "octave-docs", "pandas-docs", "scipy-docs", "sqlalchemy-docs", "sphinx-docs",
              "cmake-docs", "zsh-docs", "bind9-docs", "fontforge-docs", "kicad-docs", "lilypond-docs"],
}


def build(sources: List[str], output: str, work_dir: str) -> Dict[str, int]:
    """Write the corpus; returns documents per source."""
    counts: Dict[str, int] = {}
    tmp = output + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as out:
        for name in sources:
            source = SOURCES[name]
            root = fetch_packages(source.packages, os.path.join(work_dir, name))
            n = 0
            for title, text in source.extract(root):
                record = {"text": text, "title": title, "source": name, "licence": source.licence}
                out.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
                n += 1
            counts[name] = n
            print(f"{name:<18} {n:>7,} documents  ({source.licence})", file=sys.stderr)
    os.replace(tmp, output)
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="embedded")
    p.add_argument("--sources", nargs="+", choices=sorted(SOURCES), help="instead of a preset")
    p.add_argument("--output", help="jsonl.gz to write")
    p.add_argument("--work-dir", default=None, help="where .deb files are downloaded and unpacked "
                   "(default: a temporary folder, removed afterwards)")
    p.add_argument("--list", action="store_true", help="list the sources and their licences")
    args = p.parse_args(argv)
    if args.list:
        for s in SOURCES.values():
            presets = [k for k, v in PRESETS.items() if s.name in v]
            print(f"{s.name:<18} {s.licence:<40} {','.join(presets):<16} {s.description} "
                  f"[Debian: {' '.join(s.packages)}]")
        return 0
    if not args.output:
        p.error("--output is required")
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        print("error: needs apt-get and dpkg (a Debian or Ubuntu system)", file=sys.stderr)
        return 2
    sources = args.sources or PRESETS[args.preset]
    if args.work_dir:
        build(sources, args.output, args.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="build_corpus_") as work:
            build(sources, args.output, work)
    print(f"wrote {args.output} ({os.path.getsize(args.output):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
