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
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match="needs a GPU"):
        models.load_local(str(tmp_path), device="cpu")


def save_char_tokenizer(path, extra_tokens=0):
    """The built-in task's character tokenizer as a Hugging Face fast tokenizer (WordLevel), saved
    to ``path``; ``extra_tokens`` appends that many more tokens to its vocabulary."""
    from tokenizers import Tokenizer, models as tm, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = CharTokenizer()
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(tok.alphabet)}}
    vocab.update({f"<x{i}>": len(vocab) + i for i in range(extra_tokens)})
    core = Tokenizer(tm.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>").save_pretrained(path)


def save_checkpoint(path, dtype=torch.float32, tokenizer=True, seed=1):
    """A tiny seeded Qwen3 of the task's vocabulary saved as safetensors (+ its tokenizer)."""
    model = models.tiny_qwen3(CharTokenizer(), seed=seed, dtype=dtype)
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer:
        save_char_tokenizer(path)
    return model


def test_local_checkpoint_roundtrip(tmp_path):
    """save_pretrained (safetensors) + a tokenizer, then load_local: same logits, no network."""
    tok = CharTokenizer()
    model = save_checkpoint(tmp_path)
    loaded, hf_tok = models.load_local(str(tmp_path), device="cpu")
    assert isinstance(hf_tok, HFTokenizerAdapter)
    ids = torch.tensor([hf_tok.encode("12+7=")])
    assert ids.tolist() == [tok.encode("12+7=")]
    with torch.no_grad():  # the same weights, dtype and operations: identical logits
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


#: Qwen3 model cards: total and non-embedding parameters (billions, as published, 2-3 digits).
PUBLISHED_QWEN3 = {"0.6B": (0.6, 0.44), "1.7B": (1.7, 1.4), "4B": (4.0, 3.6), "8B": (8.2, 6.95)}


@pytest.mark.parametrize("size", sorted(PUBLISHED_QWEN3))
def test_qwen3_shapes_have_the_published_parameter_counts(size):
    """Each shape with Qwen3's vocabulary (151,936) has the published total and non-embedding
    parameter counts, to the published digits (built on the meta device: no memory)."""
    m = models.qwen3_shaped(size, vocab_size=151936, device="meta")
    total = sum(p.numel() for p in m.parameters())
    emb = m.get_input_embeddings().weight.numel() * (1 if m.config.tie_word_embeddings else 2)
    for got, (published, digits) in ((total, _digits(PUBLISHED_QWEN3[size][0])),
                                     (total - emb, _digits(PUBLISHED_QWEN3[size][1]))):
        assert abs(got / 1e9 - published) <= 0.5 * 10.0**-digits, (size, got, published)


def _digits(x):
    """``(x, number of decimals it is published with)``."""
    text = repr(x)
    return x, len(text.split(".")[1]) if "." in text else 0


# ------------------------------------------------------------------ device and dtype are honoured
@pytest.mark.parametrize("dtype", ["float64", torch.float64, "bfloat16", "float16", "float32"])
def test_requested_dtype_is_the_loaded_dtype(tmp_path, dtype):
    """The model comes back in the requested dtype (float32 checkpoint), on the requested CPU."""
    save_checkpoint(tmp_path)
    model, _ = models.load_local(str(tmp_path), device="cpu", dtype=dtype)
    want = models.resolve_dtype(dtype)
    assert {p.dtype for p in model.parameters()} == {want}
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_float64_load_computes_in_float64(tmp_path):
    """float64 throughout (RMSNorm included): the loaded model reproduces the saved model made
    float64-exact to float64 rounding (identical operations; a float32 step would leave ~1e-7)."""
    saved = save_checkpoint(tmp_path).double()
    models.make_float64_exact(saved)
    model, _ = models.load_local(str(tmp_path), device="cpu", dtype="float64")
    ids = torch.tensor([CharTokenizer().encode("12+7=3")])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, saved(input_ids=ids).logits)


def test_default_dtype_is_the_checkpoints(tmp_path):
    save_checkpoint(tmp_path, dtype=torch.bfloat16)
    model, _ = models.load_local(str(tmp_path), device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_load_model_passes_device_and_dtype_through(tmp_path):
    """``load_model`` with a checkpoint: ``device='cpu'`` and ``dtype`` reach ``load_local``
    (before, ``'cpu'`` became None and the dtype was dropped: float64 loaded as float32)."""
    from oblr_theory.bridge.task import ArithmeticTask

    save_checkpoint(tmp_path)
    model, _ = models.load_model(str(tmp_path), ArithmeticTask(), device="cpu", dtype="float64")
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    tiny, _ = models.load_model(None, ArithmeticTask(), pretrain_steps=0, dtype="bfloat16")
    assert {p.dtype for p in tiny.parameters()} == {torch.bfloat16}


def test_bad_dtype_and_unavailable_device_are_refused(tmp_path):
    save_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="dtype='float8' is not one of"):
        models.load_local(str(tmp_path), device="cpu", dtype="float8")
    with pytest.raises(ValueError, match="device='tpu0' is not a torch device"):
        models.load_local(str(tmp_path), device="tpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            models.load_local(str(tmp_path), device="cuda")


# ------------------------------------------------------------------ checkpoints it cannot load right
def test_checkpoint_without_tokenizer_is_refused(tmp_path):
    save_checkpoint(tmp_path, tokenizer=False)
    with pytest.raises(ValueError, match=r"has no tokenizer.*tokenizer\.save_pretrained"):
        models.load_local(str(tmp_path), device="cpu")


def test_pickle_only_checkpoint_is_refused(tmp_path):
    model = save_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"only pickle weights \(pytorch_model\.bin\).*safe_serialization=True"):
        models.load_local(str(tmp_path), device="cpu")


def test_encoder_decoder_config_is_refused(tmp_path):
    """A model type that AutoModelForCausalLM cannot build as a decoder (T5) is refused from its
    config, before any weights load."""
    cfg = dict(model_type="t5", vocab_size=16, d_model=8, num_layers=1, num_heads=2, d_kv=4,
               d_ff=16, is_encoder_decoder=True)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes(b"")
    save_char_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="'t5' model, not a causal"):
        models.load_local(str(tmp_path), device="cpu")


def test_bidirectional_encoder_is_refused(tmp_path):
    """BERT loads through AutoModelForCausalLM (BertLMHeadModel) but, as an encoder
    (is_decoder=False), attends both ways: refused by the forward check."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=48, vocab_size=len(CharTokenizer().alphabet) + 2,
                                  is_decoder=False)
    transformers.BertLMHeadModel(cfg).save_pretrained(tmp_path, safe_serialization=True)
    save_char_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="not causal"):
        models.load_local(str(tmp_path), device="cpu")


def test_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    save_checkpoint(tmp_path)
    save_char_tokenizer(tmp_path, extra_tokens=3)
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the model's embedding only"):
        models.load_local(str(tmp_path), device="cpu")
