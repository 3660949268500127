"""`sat-ehft bench`: our training step against Hugging Face's, in one process, on the same batches.

Ours: the SAT backbone (unpadded rows and per-sequence SDPA, or SDPA with the padding mask under
`unpad=False`) + the paper's head + a method's trainable set, stepped by the trainer's fused AdamW. The
baseline: `RobertaForSequenceClassification` / `BertForSequenceClassification` with sdpa and torch's
default AdamW. Both take forward, backward and an optimizer step, under the same autocast precision, on
the same batches padded to their own longest sequence, with lengths drawn from a real task's
token-length distribution and random ids. Both start from the same weights, Hugging Face's initialisation
(ours converted from it; an uninitialised model would time NaNs and denormals), and each side's losses must
stay finite. The sides run one after the other, so that each peak memory is its own.
"""

import json
import math
import platform
import random
import time

import torch

SHAPES = {  # hidden, layers, heads, intermediate, vocabulary
    "tiny": (64, 2, 4, 256, 1000),
    "base": (768, 12, 12, 3072, 50265),
    "large": (1024, 24, 16, 4096, 50265),
}
# Dense peak FLOP/s by (GPU name fragment, precision), for model FLOPs utilisation.
PEAK_FLOPS = {("H100", "bf16"): 989e12, ("H200", "bf16"): 989e12, ("H100", "fp32"): 67e12, ("H200", "fp32"): 67e12,
              ("A100", "bf16"): 312e12, ("A100", "fp32"): 19.5e12}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def hf_config(kind, shape, max_positions=514):
    import transformers

    hidden, layers, heads, inner, vocab = SHAPES[shape]
    config_cls = transformers.RobertaConfig if kind == "roberta" else transformers.BertConfig
    return config_cls(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=inner, max_position_embeddings=max_positions, type_vocab_size=1,
                      num_labels=1, attn_implementation="sdpa")


def task_lengths(task_name, data_dir, tokenizer, max_length):
    """Token counts of a real task's training examples (one per sequence)."""
    from sat_ehft.tasks import Encoding, encode_examples, get_task

    task = get_task(task_name)
    features = encode_examples(task, task.read(data_dir, "train"), tokenizer, Encoding(max_length))
    return [n for f in features for n in task.lengths(f)]


def make_batches(lengths, batch_size, count, vocab, seed=0):
    """`count` batches of random ids whose lengths are drawn from `lengths`, padded to each batch's longest."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        sizes = [rng.choice(lengths) for _ in range(batch_size)]
        ids = torch.randint(3, vocab, (batch_size, max(sizes)), generator=generator)
        mask = (torch.arange(max(sizes))[None, :] < torch.tensor(sizes)[:, None]).long()
        batches.append((ids * mask + (1 - mask), mask, torch.randint(0, 2, (batch_size,), generator=generator)))
    return batches


def train_flops(config, mask):
    """Model FLOPs of one training step on the real (unpadded) tokens: 6 x non-embedding parameters per token
    plus the attention products, 12 x layers x hidden x sequence length per token."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    per_layer = 4 * hidden * hidden + 2 * hidden * config.intermediate_size
    tokens = mask.sum(1).double()
    return float((6 * layers * per_layer * tokens + 12 * layers * hidden * tokens * tokens).sum())


def hf_step(kind, config):
    import transformers

    cls = transformers.RobertaForSequenceClassification if kind == "roberta" else transformers.BertForSequenceClassification
    model = cls(config)

    def loss(ids, mask, labels):
        return torch.nn.functional.binary_cross_entropy_with_logits(
            model(input_ids=ids, attention_mask=mask).logits[:, 0].float(), labels.float())

    def optimizer():
        return torch.optim.AdamW(model.parameters(), lr=1e-5)

    return model, loss, optimizer


def our_step(kind, config, method, hf_weights, unpad=True):
    """Our classifier on the backbone weights of `hf_weights` (an HF classifier's state dict), converted."""
    from sat_ehft.backbone import Backbone, backbone_with_weights
    from sat_ehft.classifier import build_classifier
    from sat_ehft.config import Config
    from sat_ehft.convert import sat_model_config, sat_state_dict
    from sat_ehft.methods import get_method
    from sat_ehft.objective import loss as task_loss
    from sat_ehft.tasks import get_task
    from sat_ehft.trainer import make_optimizer

    model_config = sat_model_config({**config.to_dict(), "model_type": kind})
    weights, _ = sat_state_dict({**config.to_dict(), "model_type": kind}, hf_weights, source="the HF side")
    backbone = Backbone(model=backbone_with_weights(model_config, weights, "the HF side"), folder=None,
                        config=model_config, fingerprint="")
    run_config = Config(unpad=unpad)
    model, trainable = build_classifier(backbone, get_task("rte"), get_method(method).stages[0], run_config)

    def loss(ids, mask, labels):
        return task_loss(model.encode(ids, mask), labels, "binary")

    def optimizer():
        return make_optimizer(model, trainable, 1e-5, run_config)

    return model, loss, optimizer


class NonFiniteBenchLoss(RuntimeError):
    """A side's loss became NaN or infinite: its timing would not be a training step's."""


def measure(model, loss_fn, make_optimizer, batches, warmup, precision, device):
    """(Seconds for the timed batches (after `warmup` untimed ones), the peak memory in GiB (CUDA only), the
    first and last timed losses). The losses stay on the device until the timing ends."""
    model.to(device).train()
    optimizer = make_optimizer()  # after the move: a fused optimizer works on the parameters' device
    dtype = DTYPES[precision]

    def step(ids, mask, labels):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            value = loss_fn(ids.to(device), mask.to(device), labels.to(device))
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return value.detach()

    for batch in batches[:warmup]:
        step(*batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    losses = [step(*batch) for batch in batches[warmup:]]
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None
    model.to("cpu")
    losses = torch.stack(losses).float().tolist()
    if not all(map(math.isfinite, losses)):
        raise NonFiniteBenchLoss(f"the loss became {losses}: not a training step worth timing")
    return seconds, peak, (losses[0], losses[-1])


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"


def side_figures(seconds, peak, losses, batches, flops, peak_flops):
    samples = sum(len(b[0]) for b in batches)
    tokens = sum(int(b[1].sum()) for b in batches)
    return {"seconds": seconds, "samples_per_s": samples / seconds, "real_tokens_per_s": tokens / seconds,
            "mfu": flops / seconds / peak_flops if peak_flops else None, "peak_memory_gib": peak,
            "first_loss": losses[0], "last_loss": losses[-1]}


def bench(kind="roberta", shape="tiny", precision="fp32", batch_size=32, steps=10, warmup=2, lengths=(128,),
          method="ft", device=None, seed=0, unpad=True):
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = hf_config(kind, shape)
    batches = make_batches(list(lengths), batch_size, warmup + steps, config.vocab_size, seed)
    timed = batches[warmup:]
    flops = sum(train_flops(config, mask) for _, mask, _ in timed)
    name = device_name(device)
    peak_flops = next((v for (gpu, p), v in PEAK_FLOPS.items() if gpu in name and p == precision), None)
    sides = {}
    torch.manual_seed(seed)
    model, loss_fn, make_optimizer = hf_step(kind, config)
    initial = {k: v.clone() for k, v in model.state_dict().items()}  # ours starts from these too
    for side in ("hf", "ours"):
        if side == "ours":
            torch.manual_seed(seed)
            model, loss_fn, make_optimizer = our_step(kind, config, method, initial, unpad)
        seconds, peak, losses = measure(model, loss_fn, make_optimizer, batches, warmup, precision, device)
        sides[side] = side_figures(seconds, peak, losses, timed, flops, peak_flops)
        del model
    import deepspeed
    import transformers

    return {"device": name, "kind": kind, "shape": shape, "precision": precision, "batch_size": batch_size,
            "steps": steps, "warmup": warmup, "method": method, "unpad": unpad, "mean_length": sum(int(m.sum()) for _, m, _ in timed) / (steps * batch_size),
            "train_flops": flops, "peak_flops": peak_flops,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "deepspeed": deepspeed.__version__},
            "hf": sides["hf"], "ours": sides["ours"],
            # Same samples on both sides, so the throughput ratio is the inverse ratio of the timings.
            "ratio_ours_over_hf": sides["hf"]["seconds"] / sides["ours"]["seconds"]}


def table(result):
    def cell(value, digits=1):
        return "-" if value is None else f"{value:.{digits}f}"

    rows = [f"{result['kind']}-{result['shape']}, {result['precision']}, batch {result['batch_size']}, "
            f"mean length {result['mean_length']:.0f}, ours {'unpadded' if result['unpad'] else 'padded'}, "
            f"{result['device']}",
            "| side | samples/s | real tokens/s | MFU | peak GiB |", "|---|---|---|---|---|"]
    for side in ("hf", "ours"):
        s = result[side]
        mfu = "-" if s["mfu"] is None else f"{100 * s['mfu']:.1f}%"
        rows.append(f"| {side} | {cell(s['samples_per_s'])} | {cell(s['real_tokens_per_s'], 0)} | {mfu} | "
                    f"{cell(s['peak_memory_gib'], 2)} |")
    rows.append(f"ours / HF: {result['ratio_ours_over_hf']:.2f}x")
    return "\n".join(rows)


def save(result, path):
    from sat_ehft.atomic import write_text

    write_text(path, json.dumps(result, indent=2) + "\n")
