import subprocess
import sys

import pytest

from megatron_sffn.data.tokenizer import SentencePieceTokenizer, TokenizerError

from .conftest import write_jsonl

ROOT = __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.dirname(
    __import__("os").path.abspath(__file__))))

HARD_TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "  two leading spaces, trailing  \n\ttab, newline\n\n\nthree newlines",
    "Ünïcödé, 日本語, emoji 🙂, digits 3.14159 and 1,000,000",
    "\x00control\x07chars\r\nCRLF",
    " ",
]


def test_bundled_tokenizer_ids_and_exact_round_trip(tokenizer_path):
    tok = SentencePieceTokenizer(tokenizer_path)
    assert tok.vocab_size == 8000
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    for text in HARD_TEXTS:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    assert tok.encode_batch(HARD_TEXTS) == [tok.encode(t) for t in HARD_TEXTS]


def test_missing_or_bogus_model_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        SentencePieceTokenizer(str(tmp_path / "nope.model"))
    bogus = tmp_path / "bogus.model"
    bogus.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="bogus.model"):
        SentencePieceTokenizer(str(bogus))


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_train_tokenizer_cli(tmp_path, small_jsonl, model_type):
    path, records = small_jsonl
    prefix = tmp_path / f"tok_{model_type}"
    result = subprocess.run([sys.executable, "tools/train_tokenizer.py", "--input", path,
                             "--json-keys", "text", "--vocab-size", "1000", "--model-prefix",
                             str(prefix), "--model-type", model_type],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    tok = SentencePieceTokenizer(str(prefix) + ".model")
    assert tok.vocab_size == 1000 and tok.eos_id == 2 and tok.pad_id == 3
    for record in records[:50]:
        assert tok.decode(tok.encode(record["text"])) == record["text"]


def test_train_tokenizer_options_and_bad_records(tmp_path, corpus_records):
    from megatron_sffn.data.tokenizer_training import train_tokenizer
    data = write_jsonl(tmp_path / "mixed.jsonl", corpus_records[:400] + [{"title": "no text"}] * 3)
    stats = {}
    model = train_tokenizer([data], ["text"], 600, str(tmp_path / "t"), byte_fallback=False,
                            pad_token=False, stats=stats)
    tok = SentencePieceTokenizer(model)
    assert tok.vocab_size == 600
    assert tok.pad_id == tok.eos_id          # no pad token: falls back to eos
    assert stats == {"missing field 'text'": 3}
    assert "<0x41>" not in {tok.id_to_piece(i) for i in range(tok.vocab_size)}


def test_train_tokenizer_rejects_wrong_key(tmp_path, corpus_records):
    from megatron_sffn.data.sources import InputError
    from megatron_sffn.data.tokenizer_training import train_tokenizer
    data = write_jsonl(tmp_path / "d.jsonl", corpus_records[:10])
    with pytest.raises(InputError, match="'content' not found.*'text'"):
        train_tokenizer([data], ["content"], 500, str(tmp_path / "t"))


def test_training_sentences_never_exceed_the_length_limit():
    from megatron_sffn.data.tokenizer_training import training_sentences
    long_line = "word " * 5000 + "x" * 3000
    pieces = list(training_sentences(["short line\n\n" + long_line], 1000))
    assert pieces[0] == "short line"
    assert all(len(p.encode()) <= 1000 for p in pieces)
    assert "".join(pieces[1:]) == long_line
