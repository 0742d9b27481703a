"""Model loading: local safetensors checkpoints only, clear errors with hints."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from oblr_theory.bridge import models  # noqa: E402
from oblr_theory.bridge.task import CharTokenizer, HFTokenizerAdapter  # noqa: E402


def test_hub_name_without_local_files_gets_a_hint():
    with pytest.raises(ValueError, match="hub name.*download"):
        models.load_local("Qwen/Qwen3-4B-Base")


def test_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        models.load_local(str(tmp_path))


def test_large_model_without_gpu_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    cfg = dict(model_type="qwen3", vocab_size=151936, hidden_size=2560, num_hidden_layers=36,
               intermediate_size=9728, num_attention_heads=32, num_key_value_heads=8, head_dim=128)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="needs a GPU"):
        models.load_local(str(tmp_path), device="cpu")


def test_local_checkpoint_roundtrip(tmp_path):
    """save_pretrained (safetensors) + a tokenizer, then load_local: same logits, no network."""
    from tokenizers import Tokenizer, models as tm, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = CharTokenizer()
    model = models.tiny_qwen3(tok, seed=1)
    model.save_pretrained(tmp_path, safe_serialization=True)
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(tok.alphabet)}}
    core = Tokenizer(tm.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>").save_pretrained(tmp_path)
    loaded, hf_tok = models.load_local(str(tmp_path), device="cpu")
    assert isinstance(hf_tok, HFTokenizerAdapter)
    ids = torch.tensor([hf_tok.encode("12+7=")])
    assert ids.tolist() == [tok.encode("12+7=")]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_qwen3_shapes_are_published_sizes():
    assert set(models.QWEN3_SHAPES) == {"0.6B", "1.7B", "4B", "8B"}
    m = models.qwen3_shaped("0.6B", vocab_size=16, num_hidden_layers=1, dtype=torch.float32)
    assert m.config.hidden_size == 1024 and m.config.tie_word_embeddings
