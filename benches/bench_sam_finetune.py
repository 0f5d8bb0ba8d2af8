"""SAM fine-tuning, decoder only: seconds per step with the cached image embedding vs recomputing it every step.

One step = one image's prompts through the prompt encoder and mask decoder (first round
plus ``--iterations`` correction rounds), the loss, backward and an AdamW update of the
mask decoder. "Cached" reads the embedding computed once before the loop (what
``instseg-sam-train --trainable decoder`` does); "recomputed" runs the frozen image
encoder (no gradients) inside every step, as a trainer without the cache would. Both
loops run in this one process on the same synthetic dense micrograph with random
weights; wall and CPU seconds are printed with their ratios.

    nice -n 10 .venv/bin/python benches/bench_sam_finetune.py --variant vit_b --steps 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="vit_b", help="vit_b (1024 input, the released models' encoder shape) or vit_tiny")
    parser.add_argument("--image-size", type=int, default=1024, help="side of the synthetic dense micrograph")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per way (after one warm-up step with the cache)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--iterations", type=int, default=1, help="correction rounds per step")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core machine)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch

    from data.dataset import in_memory
    from data.synthetic import generate
    from torch_instseg import sam_finetune as F

    torch.set_num_threads(args.threads)
    settings = F.FinetuneSettings(variant=args.variant, checkpoint="none", prompts_per_image=args.prompts,
                                  iterations=args.iterations, point_probability=1.0, lr=1e-4)
    settings.check()
    sample = generate(1, args.image_size, "dense", seed=0)[0]
    dataset = in_memory([sample])
    sam = F.build_for_training(settings, args.device)
    side = int(sam.image_encoder.img_size)
    image = F.prepare_image(sample, side, keep_pixels=True)
    optimizer = torch.optim.AdamW(F.set_trainable(sam, "decoder"), lr=settings.lr)
    cached = F.embed_all(sam, dataset, [sample.name])

    def step(embeddings) -> None:
        sam.train()
        sam.image_encoder.eval()
        rng = np.random.default_rng(0)
        chosen = F.choose_prompts(image, settings.prompts_per_image, rng)
        if embeddings is None:
            with torch.no_grad():
                embedding = F.compute_embedding(sam, image.pixels)
        else:
            embedding = embeddings[image.name].to(sam.device)
        loss, _ = F.prompt_rounds(sam, embedding, image, chosen, settings, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    timings: dict[str, tuple[list[float], list[float]]] = {}
    step(cached)
    for way, embeddings in (("cached", cached), ("recomputed", None)):
        walls, cpus = [], []
        for _ in range(args.steps):
            wall, cpu = time.perf_counter(), time.process_time()
            step(embeddings)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        timings[way] = (walls, cpus)
    print(f"SAM {args.variant} (input {side}), {len(image.targets)} instances, {args.prompts} prompts x "
          f"{args.iterations + 1} rounds per step, {args.threads} thread(s), {args.steps} timed steps each")
    for way, (walls, cpus) in timings.items():
        print(f"  {way:>10}: {statistics.median(walls):8.3f} s/step wall, {statistics.median(cpus):8.3f} s/step CPU (median)")
    wall_ratio = statistics.median(timings["recomputed"][0]) / statistics.median(timings["cached"][0])
    cpu_ratio = statistics.median(timings["recomputed"][1]) / statistics.median(timings["cached"][1])
    print(f"  cache speed-up: {wall_ratio:.1f}x wall, {cpu_ratio:.1f}x CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
