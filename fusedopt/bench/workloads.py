"""Benchmark workloads: parameter shape lists built from configurations, with no download."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    name: str
    shapes: tuple[tuple[int, ...], ...]
    kind: str  # "flat", "model" or "many-small"

    @property
    def sizes(self) -> list[int]:
        sizes = []
        for shape in self.shapes:
            n = 1
            for d in shape:
                n *= d
            sizes.append(n)
        return sizes

    @property
    def numel(self) -> int:
        return sum(self.sizes)


def flat(numel: int, tensors: int = 1) -> Workload:
    """`numel` elements as `tensors` equal tensors (the last takes the remainder)."""
    base = numel // tensors
    shapes = [(base,)] * (tensors - 1) + [(numel - base * (tensors - 1),)]
    label = f"flat-{_human(numel)}" + (f"x{tensors}" if tensors > 1 else "")
    return Workload(label, tuple(shapes), "flat")


def gpt2_like(n_layer=12, n_embd=768, vocab_size=50257, n_positions=1024, name="gpt2-small") -> Workload:
    """The parameters of GPT-2 (Radford et al., 2019; the Hugging Face GPT2Model layout): 124M at defaults."""
    shapes = [(vocab_size, n_embd), (n_positions, n_embd)]
    for _ in range(n_layer):
        shapes += [
            (n_embd,), (n_embd,),  # ln_1
            (n_embd, 3 * n_embd), (3 * n_embd,),  # attn.c_attn
            (n_embd, n_embd), (n_embd,),  # attn.c_proj
            (n_embd,), (n_embd,),  # ln_2
            (n_embd, 4 * n_embd), (4 * n_embd,),  # mlp.c_fc
            (4 * n_embd, n_embd), (n_embd,),  # mlp.c_proj
        ]  # fmt: skip
    shapes += [(n_embd,), (n_embd,)]  # ln_f
    return Workload(name, tuple(shapes), "model")


def llama_like(
    n_layer=22, hidden=2048, intermediate=5632, n_heads=32, n_kv_heads=4, vocab_size=32000, name="llama-1.1b"
) -> Workload:
    """The parameters of a Llama-architecture model (TinyLlama-1.1B's configuration at defaults): grouped-query
    attention, SwiGLU MLP, RMSNorm, untied embeddings."""
    head_dim = hidden // n_heads
    kv = n_kv_heads * head_dim
    shapes = [(vocab_size, hidden)]
    for _ in range(n_layer):
        shapes += [
            (hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden),  # q, k, v, o projections
            (intermediate, hidden), (intermediate, hidden), (hidden, intermediate),  # gate, up, down
            (hidden,), (hidden,),  # input and post-attention RMSNorm
        ]  # fmt: skip
    shapes += [(hidden,), (vocab_size, hidden)]  # final norm, lm_head
    return Workload(name, tuple(shapes), "model")


def many_small(count: int, low: int, high: int, seed: int = 0) -> Workload:
    """`count` tensors with sizes drawn log-uniformly between `low` and `high` elements (seeded)."""
    rng = random.Random(seed)
    sizes = [int(round(low * (high / low) ** rng.random())) for _ in range(count)]
    return Workload(f"small-{count}x{_human(low)}-{_human(high)}", tuple((s,) for s in sizes), "many-small")


def default_workloads(device_type: str, quick: bool) -> list[Workload]:
    if quick:
        return [flat(1 << 20), flat(64 << 20), flat(64 << 20, tensors=200)]
    if device_type == "cpu":
        sizes = [1 << 20, 4 << 20, 16 << 20, 64 << 20]
        return [
            *(flat(n) for n in sizes),
            flat(64 << 20, tensors=200),
            gpt2_like(),
            llama_like(n_layer=8, hidden=1024, intermediate=2816, n_heads=16, n_kv_heads=4, name="llama-160m"),
            many_small(1000, 4 << 10, 64 << 10),
        ]
    sizes = [1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20, 1 << 30]
    return [*(flat(n) for n in sizes), gpt2_like(), llama_like(), many_small(2000, 4 << 10, 256 << 10)]


def _human(n: int) -> str:
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)
