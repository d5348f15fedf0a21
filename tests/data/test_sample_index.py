"""Sample-index construction against a brute-force reference on small random corpora."""
import numpy as np
import pytest

from megatron_sffn.data.sample_index import (build_blending_indices, build_document_index,
                                             build_gpt_indices, build_sample_index,
                                             num_epochs_for, separate_final_epoch)


def brute_force_samples(sizes, document_index, seq_length, num_samples, doc_tokens):
    """Concatenate the documents in document-index order; sample i is stream[i*s : i*s+s+1]."""
    stream = np.concatenate([doc_tokens[d] for d in document_index])
    return [stream[i * seq_length:i * seq_length + seq_length + 1] for i in range(num_samples)]


def sample_from_index(sample_index, document_index, doc_tokens, i):
    (d0, o0), (d1, o1) = sample_index[i], sample_index[i + 1]
    if d0 == d1:
        return doc_tokens[document_index[d0]][o0:o1 + 1]
    parts = [doc_tokens[document_index[d0]][o0:]]
    parts += [doc_tokens[document_index[p]] for p in range(d0 + 1, d1)]
    parts.append(doc_tokens[document_index[d1]][:o1 + 1])
    return np.concatenate(parts)


def random_corpus(seed, n_docs, max_len, zero_fraction=0.1):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_len, size=n_docs).astype(np.int32)
    sizes[rng.random(n_docs) < zero_fraction] = 0            # empty documents too
    doc_tokens, next_token = [], 0
    for s in sizes:                                           # every token unique: any slip shows
        doc_tokens.append(np.arange(next_token, next_token + s))
        next_token += s
    return sizes, doc_tokens


@pytest.mark.parametrize("seed,n_docs,max_len,seq_length,num_samples", [
    (0, 40, 30, 7, None),         # one epoch, short docs: samples span many documents
    (1, 25, 200, 16, 300),        # several epochs
    (2, 60, 5, 3, 1000),          # docs shorter than a sample
    (3, 10, 1000, 64, 40),        # docs longer than a sample
    (4, 30, 50, 1, 500),          # seq_length 1
])
def test_samples_match_brute_force(seed, n_docs, max_len, seq_length, num_samples):
    sizes, doc_tokens = random_corpus(seed, n_docs, max_len)
    documents = np.arange(n_docs, dtype=np.int32)
    doc_index, sample_index, shuffle = build_gpt_indices(sizes, documents, num_samples, seq_length, seed)
    total = len(sample_index) - 1
    if num_samples is not None:
        assert total >= num_samples
    epochs = len(doc_index) // n_docs
    assert np.array_equal(np.sort(doc_index), np.sort(np.tile(documents, epochs)))
    expected = brute_force_samples(sizes, doc_index, seq_length, total, doc_tokens)
    for i in range(total):
        got = sample_from_index(sample_index, doc_index, doc_tokens, i)
        assert len(got) == seq_length + 1
        assert np.array_equal(got, expected[i]), i
    assert np.array_equal(np.sort(shuffle), np.arange(total))
    # every token of the stream is used, bar the tail that cannot fill a sample
    stream_len = int(sizes.sum()) * epochs
    assert total == (stream_len - 1) // seq_length


def test_chunked_build_equals_one_chunk():
    sizes, _ = random_corpus(5, 500, 40)
    doc_index = build_document_index(np.arange(500, dtype=np.int32), 3, np.random.RandomState(0), False)
    tokens = int(sizes.sum())
    whole = build_sample_index(sizes, doc_index, 13, 3, tokens)
    for chunk in (1, 7, 64, 499):
        assert np.array_equal(build_sample_index(sizes, doc_index, 13, 3, tokens, chunk=chunk), whole)


def test_epochs_and_separate_final_epoch():
    assert num_epochs_for(1000, 10, 100) == 2          # 10 * 100 + 1 tokens > 1000
    assert num_epochs_for(1001, 10, 100) == 1
    assert num_epochs_for(1000, None, 100) == 1
    # 2 epochs where the second is barely used: it is shuffled on its own ...
    assert separate_final_epoch(2, 1000, 10, 101)
    # ... but not when most of it is used
    assert not separate_final_epoch(2, 1000, 10, 190)
    sizes = np.full(100, 10, dtype=np.int32)
    doc_index, sample_index, shuffle = build_gpt_indices(sizes, np.arange(100, dtype=np.int32), 101, 10, 0)
    assert len(doc_index) == 200
    # the first epoch's documents are all in the first half, the second's in the second
    assert sorted(doc_index[:100]) == list(range(100)) == sorted(doc_index[100:])
    first_epoch_samples = (1000 - 1) // 10
    assert sorted(shuffle[:first_epoch_samples]) == list(range(first_epoch_samples))
    assert sorted(shuffle[first_epoch_samples:]) == list(range(first_epoch_samples, len(shuffle)))


def test_index_is_a_pure_function_of_its_inputs():
    sizes, _ = random_corpus(9, 80, 60)
    docs = np.arange(80, dtype=np.int32)
    a = build_gpt_indices(sizes, docs, 500, 32, 42)
    b = build_gpt_indices(sizes, docs, 500, 32, 42)
    c = build_gpt_indices(sizes, docs, 500, 32, 43)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[2], c[2])


@pytest.mark.parametrize("weights", [[0.5, 0.5], [0.3, 0.7], [0.1, 0.2, 0.3, 0.4], [5, 1, 1]])
def test_blending_proportions_hold_at_every_prefix(weights):
    size = 5000
    dataset_index, sample_index = build_blending_indices(weights, size)
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    one_hot = np.eye(len(w), dtype=np.int64)[dataset_index]
    counts = np.cumsum(one_hot, axis=0)                      # counts after t + 1 samples
    ideal = np.outer(np.arange(1, size + 1), w)
    assert np.abs(counts - ideal).max() <= 1.0 + 1e-9
    # each dataset's samples are taken in order 0, 1, 2, ...
    for k in range(len(w)):
        assert np.array_equal(sample_index[dataset_index == k], np.arange(counts[-1, k]))
