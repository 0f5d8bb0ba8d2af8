"""Benchmark of semantic training: training-step throughput vs the input pipeline alone.

For each model (random init, compiled as ``semseg-train`` compiles it) the script
trains a fixed number of steps on batches already in memory (images/s of the step:
forward, backward, Adam update), and separately pulls batches from the training
``tf.data`` pipeline (shuffle, batch, augmentation map, prefetch) without a model
(images/s of the input pipeline). Target: pipeline >= 3x the training step, so the
model never waits for data. Data: synthetic MSC-like images (``data.synthetic``),
``--original-size`` pixels, resized to ``--image-size``. Also prints each model's
parameter count.

    nice -n 10 timeout 1800 .venv/bin/python benches/bench_semseg_train.py [--image-size 128] [--steps 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from keras_semseg.tf_env import tensorflow


def pipeline_throughput(train_batches, n_batches: int, batch_size: int) -> float:
    """Images/s pulled from the (repeated) training pipeline, after one warm-up batch."""
    iterator = iter(train_batches.repeat())
    next(iterator)
    started = time.perf_counter()
    for _ in range(n_batches):
        images, _ = next(iterator)
    images.numpy()
    return n_batches * batch_size / (time.perf_counter() - started)


def step_throughput(model, batches: list, steps: int, warmup: int) -> float:
    """Images/s of ``model.train_on_batch`` on in-memory batches, after ``warmup`` steps (tracing)."""
    for index in range(warmup):
        model.train_on_batch(*batches[index % len(batches)])
    started = time.perf_counter()
    images = 0
    for index in range(steps):
        x, y = batches[index % len(batches)]
        model.train_on_batch(x, y)
        images += int(x.shape[0])
    return images / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unet", "deeplabv3plus", "segnet"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--original-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--images", type=int, default=32, help="synthetic training images")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps (tracing)")
    parser.add_argument("--pipeline-batches", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    tf = tensorflow()

    from data import in_memory
    from data.synthetic import generate
    from keras_semseg import build_model
    from keras_semseg.models import count_parameters
    from keras_semseg.pipeline import source_dataset, training_dataset
    from keras_semseg.train import make_optimizer

    tf.keras.utils.set_random_seed(args.seed)
    dataset = in_memory(generate(args.images, args.original_size, "dense", seed=args.seed))
    started = time.perf_counter()
    source, cached = source_dataset(dataset, dataset.names, args.image_size, "mask", shuffle_seed=args.seed)
    load_s = time.perf_counter() - started
    train_batches = training_dataset(source, len(dataset), args.batch_size, augment=True, seed=args.seed)
    pipeline_ips = pipeline_throughput(train_batches, args.pipeline_batches, args.batch_size)
    batches = [(x.numpy(), y.numpy()) for x, y in train_batches.take(max(args.warmup, 2))]

    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, "
          f"GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    print(f"data: {args.images} synthetic images {args.original_size}px -> {args.image_size}px, batch {args.batch_size}, "
          f"loaded+resized in {load_s:.1f} s (cached in memory: {cached})")
    print(f"input pipeline alone (shuffle + augment + prefetch): {pipeline_ips:.1f} images/s")
    print(f"{'model':<14} {'parameters':>12} {'step img/s':>11} {'pipeline/step':>14}")
    results = []
    for name in args.models:
        model = build_model(name, (args.image_size, args.image_size, 3), encoder_weights=None)
        model.compile(optimizer=make_optimizer(), loss=tf.keras.losses.BinaryCrossentropy(),
                      metrics=[tf.keras.metrics.BinaryAccuracy(name="pixel_accuracy")])
        parameters = count_parameters(model)["total"]
        step_ips = step_throughput(model, batches, args.steps, args.warmup)
        ratio = pipeline_ips / step_ips
        results.append({"model": name, "parameters": parameters, "step_images_per_s": round(step_ips, 3),
                        "pipeline_images_per_s": round(pipeline_ips, 1), "pipeline_to_step": round(ratio, 1),
                        "target_met": ratio >= 3.0})
        print(f"{name:<14} {parameters:>12,} {step_ips:>11.2f} {ratio:>13.1f}x  {'ok' if ratio >= 3 else 'BELOW 3x'}", flush=True)
        del model
        tf.keras.backend.clear_session()
    print(json.dumps({"settings": vars(args), "results": results}))
    return 0 if all(r["target_met"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
