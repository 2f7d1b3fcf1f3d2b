"""Generation speed: 1,024 sampled tokens with the KV cache against recomputing the whole prefix
at every step (`cache_kv=False`), same model, same run; plus the cost of each token over the
sequence in bins, which stays flat with the cache and grows with the prefix without it; and
Staria's decoding loop (`generate_with_cache`, batch-invariant) against x-transformers' own
`AutoregressiveWrapper.generate` on the same network and prompts, in CPU and wall seconds."""

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import hydra
import numpy as np
import torch
from x_transformers import AutoregressiveWrapper

from staria.generation.prompts import Prompt
from staria.generation.sampling import SamplingSettings, sample_pieces
from staria.models import StariaModel
from staria.models.autoregressive import DecodingSpec, LogitsFilter, generate_with_cache
from staria.tokenizer import MusicTokenizerWithStyle
from staria.training.config import compose_net


def piece_start(tokenizer: MusicTokenizerWithStyle, snippet_len: int, seed: int) -> Prompt:
    """An ABA request with two random snippets: the sampling path of a real Staria prompt."""
    ids = tokenizer.token_to_id
    rng = np.random.default_rng(seed)
    snippets = tuple(
        np.concatenate(
            [[ids[tokenizer.section_token(letter)]], rng.integers(6, 17000, snippet_len)]
        )
        for letter in "AB"
    )
    start = np.array(
        [
            ids[("prefix", "instrument", "piano")],
            ids[tokenizer.form_token("ABA")],
            tokenizer.bos_id,
            ids[tokenizer.section_token("A")],
        ]
    )
    return Prompt("benchmark", "ABA", None, snippets, start, start)


def timed_sampling(model, prompts, new_tokens, cache_kv, tokenizer):
    """Wall time and per-step seconds (one output-head call per generated token)."""
    stamps: list[float] = []
    # the output head runs once per generated token, cached or not
    head = model.decoder.net.to_logits
    hook = head.register_forward_hook(lambda *_: stamps.append(time.perf_counter()))
    settings = SamplingSettings(max_length=len(prompts[0].decoder_start) + new_tokens)
    torch.manual_seed(0)
    started = time.perf_counter()
    pieces, _ = sample_pieces(
        model,
        prompts,
        settings,
        batch_size=len(prompts),
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        cache_kv=cache_kv,
    )
    seconds = time.perf_counter() - started
    hook.remove()
    generated = sum(len(p.token_ids) - len(p.prompt.decoder_start) for p in pieces)
    return seconds, generated, np.diff([started, *stamps])


def loop_against_wrapper(new_tokens: int, batch: int, repeats: int = 3) -> None:
    """Median CPU and wall seconds of both loops, alternating, greedy, prompts of different
    lengths (left-padded), on the tiny baseline network; the samples must agree."""
    torch.manual_seed(0)
    net = hydra.utils.instantiate(compose_net("baseline_tiny")).net.eval()
    prompts = [torch.randint(6, 17000, (8 + 5 * i,)) for i in range(batch)]
    greedy = DecodingSpec(LogitsFilter(temperature=0.0), eos_id=-1, pad_id=2)
    wrapper = AutoregressiveWrapper(net, pad_value=2)

    def staria():
        return generate_with_cache(net, prompts, new_tokens, greedy)

    def x_transformers():
        return wrapper.generate(prompts, new_tokens, temperature=0.0, cache_kv=True)

    times: dict[str, list[tuple[float, float]]] = {"staria": [], "x-transformers": []}
    outputs = {}
    for _ in range(repeats):
        for name, run in (("staria", staria), ("x-transformers", x_transformers)):
            cpu, wall = time.process_time(), time.perf_counter()
            with torch.no_grad():
                outputs[name] = run()
            times[name].append((time.process_time() - cpu, time.perf_counter() - wall))
    same = torch.equal(outputs["staria"], outputs["x-transformers"])
    cpu = {name: float(np.median([t[0] for t in runs])) for name, runs in times.items()}
    wall = {name: float(np.median([t[1] for t in runs])) for name, runs in times.items()}
    print(
        f"decoding loop, tiny baseline, batch {batch}, {new_tokens} tokens (within max_seq_len): "
        f"Staria {cpu['staria']:.2f} CPU-s / {wall['staria']:.2f} s, x-transformers "
        f"{cpu['x-transformers']:.2f} CPU-s / {wall['x-transformers']:.2f} s; ratio "
        f"{cpu['staria'] / cpu['x-transformers']:.2f}x CPU, "
        f"{wall['staria'] / wall['x-transformers']:.2f}x wall; samples equal: {same}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new-tokens", type=int, default=1024)
    parser.add_argument("--bin", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = MusicTokenizerWithStyle()
    torch.manual_seed(0)
    model: StariaModel = hydra.utils.instantiate(compose_net("staria_tiny")).eval()
    context = model.decoder.net.max_seq_len
    # Untrained weights could emit <E> early; a -inf logit keeps every run at full length.
    model.decoder.net.to_logits.register_forward_hook(
        lambda _, __, logits: logits.index_fill(-1, torch.tensor([tokenizer.eos_id]), -torch.inf)
    )
    prompts = [piece_start(tokenizer, 64, seed) for seed in range(args.batch)]
    print(
        f"tiny Staria (dim 64, 2+2 layers, context {context}), batch {args.batch}, "
        f"{args.new_tokens} new tokens, torch threads 1"
    )
    results = {}
    for cache_kv in (True, False):
        seconds, generated, steps = timed_sampling(
            model, prompts, args.new_tokens, cache_kv, tokenizer
        )
        results[cache_kv] = (seconds, generated, steps)
        name = "KV cache" if cache_kv else "full prefix"
        print(
            f"{name:>12}: {generated} tokens in {seconds:.2f} s = {generated / seconds:.1f} tok/s"
        )
    (cached_s, cached_n, cached_steps), (full_s, full_n, full_steps) = results[True], results[False]
    speedup = (cached_n / cached_s) / (full_n / full_s)
    print(f"speedup with cache: {speedup:.1f}x tokens/s")
    print(f"{'tokens':>12} {'cache ms/tok':>13} {'full ms/tok':>12}")
    bins = range(0, args.new_tokens, args.bin)
    cached_bins = [1000 * cached_steps[b : b + args.bin].mean() for b in bins]
    full_bins = [1000 * full_steps[b : b + args.bin].mean() for b in bins]
    for start, cached, full in zip(bins, cached_bins, full_bins, strict=True):
        print(f"{start:>5}-{start + args.bin:<6} {cached:>13.2f} {full:>12.2f}")
    print(
        f"last bin / first bin: cache {cached_bins[-1] / cached_bins[0]:.2f}x, "
        f"full prefix {full_bins[-1] / full_bins[0]:.2f}x"
    )
    for batch in (1, 4):
        loop_against_wrapper(args.new_tokens // 2, batch)


if __name__ == "__main__":
    main()
