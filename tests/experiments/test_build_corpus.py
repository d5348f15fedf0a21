"""experiments/sweep/build_corpus.py's extractors on small planted inputs (no network needed)."""
import gzip

from experiments.sweep import build_corpus


def test_html_extraction_keeps_prose_and_drops_navigation_and_code():
    page = """<html><head><title>T</title></head><body>
      <div class="related" role="navigation"><ul><li>index</li><li>next</li></ul></div>
      <h1>Heading</h1><p>The <code>spam</code> function returns eggs.</p>
      <pre>def spam():\n    return eggs</pre><nav>menu</nav>
      <p>Second&nbsp;paragraph &amp; more.</p></body></html>"""
    assert build_corpus.html_to_text(page) == \
        "Heading\n\nThe spam function returns eggs.\n\nSecond paragraph & more."


def test_dictd_entries_are_decoded_from_the_index(tmp_path):
    body = b"header text\nAPPLE, n. A fruit.\nBANANA, n. Another, longer fruit, yellow when ripe.\n"
    entries = [("00databaseinfo", 0, 12), ("apple", 12, 18), ("banana", 30, len(body) - 30),
               ("plantain", 30, len(body) - 30)]           # two headwords, one entry

    def b64(n):
        digits = ""
        while True:
            digits = build_corpus._B64[n % 64] + digits
            n //= 64
            if n == 0:
                return digits
    (tmp_path / "d.index").write_text("".join(f"{w}\t{b64(s)}\t{b64(n)}\n" for w, s, n in entries))
    (tmp_path / "d.dict.dz").write_bytes(gzip.compress(body))
    got = list(build_corpus.dictd_entries(str(tmp_path / "d.index"), str(tmp_path / "d.dict.dz")))
    assert got == [("banana", "BANANA, n. Another, longer fruit, yellow when ripe.")]


def test_pod_and_rst_extraction(tmp_path):
    root = tmp_path / "root"
    (root / "pod").mkdir(parents=True)
    (root / "pod" / "x.pod").write_text(
        "=head1 NAME C<perlx>\n\nThe B<bold> text links L<perlfunc|perlfunc> here.\n\n"
        "    my $code = 1;\n\n" + "A long prose paragraph about Perl. " * 20 + "\n")
    [(name, text)] = list(build_corpus.extract_pod_tree("pod")(str(root)))
    assert text.startswith("NAME perlx\n\nThe bold text links perlfunc here.")
    assert "$code" not in text
    (root / "doc").mkdir()
    with gzip.open(root / "doc" / "a.rst.gz", "wt") as f:
        f.write("Title\n=====\n\n.. note:: skip me\n\nReal prose line. " + "More prose. " * 60 +
                "\n\n::\n\n    code block\n")
    [(name, text)] = list(build_corpus.extract_text_tree("doc", "*.rst.gz")(str(root)))
    assert text.startswith("Title\n\nReal prose line.") and "code block" not in text and "skip me" not in text
