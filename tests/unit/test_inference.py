"""Generation and pre-merge: same tokens with pre-merge on and off; dispatch by tokens in flight."""
import pytest
import torch

from megatron_sffn.inference.generation import SamplingConfig, filter_logits, generate
from megatron_sffn.inference.premerge import PreMergedMap, apply_premerge, calibrate, load_thresholds, save_calibration
from megatron_sffn.model import GPTModel

from .helpers import tiny_model


def _model(kind="lowrank"):
    return GPTModel(tiny_model(kind, num_kv_heads=2)).initialize(seed=1)


def test_greedy_generation_matches_full_forward_argmax():
    model = _model().double()
    prompt = [3, 17, 42, 9]
    new = generate(model, [prompt], SamplingConfig(max_new_tokens=6, temperature=0.0))[0]
    seq = list(prompt)
    for _ in range(6):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert new == seq[len(prompt):]


@pytest.mark.parametrize("kind", ["lowrank", "blockdense", "blockshuffle"])
def test_premerge_on_off_give_identical_tokens(kind):
    model = _model(kind)
    prompts = [[1, 2, 3, 4, 5], [9, 8]]
    sampling = SamplingConfig(max_new_tokens=8, temperature=0.8, top_k=20, top_p=0.9, seed=3)
    apply_premerge(model, "off")
    off = generate(model, prompts, sampling)
    apply_premerge(model, "on")
    on = generate(model, prompts, sampling)
    assert on == off
    maps = [m for m in model.modules() if isinstance(m, PreMergedMap)]
    assert maps and all(m.calls["merged"] > 0 and m.calls["structured"] == 0 for m in maps)


def test_auto_dispatch_uses_threshold_by_tokens_in_flight():
    model = _model()
    apply_premerge(model, "auto", default_threshold=4)
    maps = [m for m in model.modules() if isinstance(m, PreMergedMap)]
    model(torch.tensor([[1, 2, 3, 4, 5, 6]]))       # 6 tokens in flight: structured
    model(torch.tensor([[1, 2, 3]]))                # 3 tokens: merged
    assert all(m.calls == {"merged": 1, "structured": 1} for m in maps)


def test_calibration_round_trip(tmp_path):
    model = _model()
    results = calibrate(model, tokens=(1, 8), repeats=2)
    assert results and all("threshold" in v and len(v["timings"]) == 2 for v in results.values())
    path = str(tmp_path / "cal.json")
    save_calibration(path, "cpu", results)
    assert load_thresholds(path, "cpu") == {k: v["threshold"] for k, v in results.items()}


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert torch.isinf(filter_logits(logits, 2, 1.0)[0, :2]).all()
    # softmax = [0.03, 0.09, 0.24, 0.64]: a nucleus of 0.5 is the top token; of 0.7, the top two
    assert (~torch.isinf(filter_logits(logits, 0, 0.5)))[0].tolist() == [False, False, False, True]
    assert (~torch.isinf(filter_logits(logits, 0, 0.7)))[0].tolist() == [False, False, True, True]


def test_vocab_limit_keeps_ids_inside_the_tokenizer():
    """A model whose vocabulary is padded beyond the tokenizer's never emits the extra ids."""
    model = _model()
    with torch.no_grad():  # make the padded ids the most likely ones
        model.embedding.weight[100:] *= 50
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0, seed=0, vocab_limit=100)
    out = generate(model, [[1, 2, 3]], sampling)[0]
    assert out and max(out) < 100
    greedy = generate(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=6, temperature=0.0, vocab_limit=100))[0]
    assert max(greedy) < 100


@pytest.mark.parametrize("field, value, message", [
    ("max_new_tokens", 0, "max_new_tokens must be >= 1"),
    ("temperature", -0.5, "temperature must be >= 0"),
    ("top_k", -1, "top_k must be >= 0"),
    ("top_p", 0.0, "top_p must be in (0, 1]"),
    ("top_p", 1.5, "top_p must be in (0, 1]"),
])
def test_sampling_settings_no_sampler_can_honour_are_refused(field, value, message):
    sampling = SamplingConfig(max_new_tokens=4)
    setattr(sampling, field, value)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        generate(_model(), [[1, 2]], sampling)


def test_prompt_ids_outside_the_models_vocabulary_name_the_mismatch():
    model = _model()
    with pytest.raises(ValueError, match=f"prompt token id {model.cfg.vocab_size} is outside the model's vocabulary"):
        generate(model, [[1, model.cfg.vocab_size]], SamplingConfig(max_new_tokens=2))
    with pytest.raises(ValueError, match="no prompts"):
        generate(model, [], SamplingConfig(max_new_tokens=2))
