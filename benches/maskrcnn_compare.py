"""Mask R-CNN (Keras) vs U-Net (and optionally torchvision's Mask R-CNN v2) on one small
synthetic run: same training images, batch size and number of steps, random init.

Reports per model the semantic Dice on held-out images (mean over images, probability
> 0.5, and at the best threshold of a 0.05-step sweep) and, for the Mask R-CNNs, the
instance recall at mask IoU 0.5. With ``--figure`` also draws three validation images
with the Keras Mask R-CNN's instances (``plots.plot_instances``).

    nice -n 10 timeout 3000 .venv/bin/python benches/maskrcnn_compare.py --steps 200 \\
        [--models maskrcnn,unet,torchvision] [--figure /work/artifacts/maskrcnn_instances] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from keras_semseg.tf_env import tensorflow

# Small heads so that a few hundred steps run on a CPU in minutes (the backbone is the full ResNet-50).
CPU_SETTINGS = {"fpn_channels": 64, "box_head_dim": 128, "mask_head_channels": 32, "rois_per_image": 64,
                "mask_rois_per_image": 16, "rpn_post_nms_train": 200, "rpn_post_nms_test": 100,
                "detections_per_image": 20}
THRESHOLDS = np.round(np.arange(0.0, 1.0001, 0.05), 2)


def semantic_scores(probabilities: list[np.ndarray], samples) -> dict[str, float]:
    from keras_semseg.models.maskrcnn.metrics import dice

    table = np.array([[dice(p, s.mask, t) for t in THRESHOLDS] for p, s in zip(probabilities, samples)])
    best = int(np.argmax(table.mean(axis=0)))
    return {"dice_at_0.5": float(table[:, list(THRESHOLDS).index(0.5)].mean()),
            "dice_best": float(table[:, best].mean()), "best_threshold": float(THRESHOLDS[best])}


def recall(samples, masks_per_image) -> float:
    from keras_semseg.models.maskrcnn.metrics import instance_recall

    counts = np.array([instance_recall(s.labels, m) for s, m in zip(samples, masks_per_image)])
    return float(counts[:, 0].sum() / max(counts[:, 1].sum(), 1))


def batches(train, batch_size: int, seed: int, target: str):
    tf = tensorflow()

    images = np.stack([s.image for s in train])
    labels = np.stack([s.labels for s in train])[..., None]
    labels = labels.astype(np.int32) if target == "instances" else (labels > 0).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(len(train), seed=seed).repeat().batch(batch_size)


def run_keras_maskrcnn(train, val, args) -> tuple[dict, object]:
    tf = tensorflow()

    from keras_semseg.models.maskrcnn import build, count_parameters

    tf.keras.utils.set_random_seed(args.seed)
    settings = {} if args.full_heads else CPU_SETTINGS
    model = build((args.size, args.size, 3), None, **settings)
    model.compile(optimizer=tf.keras.optimizers.Adam())
    started = time.perf_counter()
    history = model.fit(batches(train, args.batch_size, args.seed, "instances"), steps_per_epoch=args.steps, epochs=1, verbose=0)
    train_s = time.perf_counter() - started
    images = np.stack([s.image for s in val])
    detections = model.detect(images)
    probabilities = list(model.predict(images, batch_size=4, verbose=0)[..., 0])
    result = {"model": "maskrcnn (keras)", "settings": settings, "parameters": count_parameters(model)["total"],
              "train_s": round(train_s, 1), "final_loss": float(history.history["loss"][-1]),
              "recall_iou_0.5": recall(val, [d["masks"] for d in detections]),
              "detections_per_image": float(np.mean([len(d["scores"]) for d in detections])),
              **semantic_scores(probabilities, val)}
    return result, (model, detections)


def run_unet(train, val, args) -> dict:
    tf = tensorflow()

    import keras_semseg

    tf.keras.utils.set_random_seed(args.seed)
    model = keras_semseg.build_model("unet", (args.size, args.size, 3), encoder_weights=None)
    model.compile(optimizer=tf.keras.optimizers.Adam(), loss=tf.keras.losses.BinaryCrossentropy())
    started = time.perf_counter()
    history = model.fit(batches(train, args.batch_size, args.seed, "mask"), steps_per_epoch=args.steps, epochs=1, verbose=0)
    train_s = time.perf_counter() - started
    probabilities = list(model.predict(np.stack([s.image for s in val]), batch_size=4, verbose=0)[..., 0])
    return {"model": "unet (vgg16, keras)", "parameters": int(model.count_params()), "train_s": round(train_s, 1),
            "final_loss": float(history.history["loss"][-1]), **semantic_scores(probabilities, val)}


def run_torchvision(train, val, args) -> dict:
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    from keras_semseg.models.maskrcnn.anchors import default_anchor_sizes

    torch.manual_seed(args.seed)
    sizes = tuple((int(s),) for s in default_anchor_sizes(args.size, args.size))
    model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=2, min_size=args.size, max_size=args.size,
                                     box_score_thresh=0.05)
    model.rpn.anchor_generator = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def target(sample):
        ids = [i for i in np.unique(sample.labels) if i > 0]
        masks = np.stack([sample.labels == i for i in ids]).astype(np.uint8)
        boxes = []
        for mask in masks:
            rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
            boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
        return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.ones(len(ids), dtype=torch.int64),
                "masks": torch.from_numpy(masks)}

    rng = np.random.default_rng(args.seed)
    model.train()
    started = time.perf_counter()
    order = []
    for _ in range(args.steps):
        if len(order) < args.batch_size:
            order += list(rng.permutation(len(train)))
        chosen, order = order[:args.batch_size], order[args.batch_size:]
        images = [torch.from_numpy(train[i].image).permute(2, 0, 1) for i in chosen]
        losses = model(images, [target(train[i]) for i in chosen])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    train_s = time.perf_counter() - started
    model.eval()
    masks, probabilities = [], []
    with torch.no_grad():
        for sample in val:
            output = model([torch.from_numpy(sample.image).permute(2, 0, 1)])[0]
            image_masks = output["masks"][:, 0].numpy()
            masks.append(image_masks)
            probabilities.append(image_masks.max(axis=0) if len(image_masks) else np.zeros(sample.shape, np.float32))
    return {"model": "maskrcnn_resnet50_fpn_v2 (torchvision)", "parameters": int(parameters), "train_s": round(train_s, 1),
            "final_loss": float(sum(v.item() for v in losses.values())), "recall_iou_0.5": recall(val, masks),
            "detections_per_image": float(np.mean([len(m) for m in masks])), **semantic_scores(probabilities, val)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-heads", action="store_true", help="default (paper-size) heads instead of the small CPU heads")
    parser.add_argument("--models", default="maskrcnn,unet",
                        help="comma-separated, of maskrcnn (Keras), unet, torchvision (maskrcnn_resnet50_fpn_v2)")
    parser.add_argument("--figure", help="output stem for the instance figure of three validation images")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    from data.synthetic import generate

    train = generate(args.n_train, args.size, "sparse", seed=args.seed + 1, prefix="train")
    val = generate(args.n_val, args.size, "sparse", seed=args.seed + 2, prefix="val")
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = set(models) - {"maskrcnn", "unet", "torchvision"}
    if unknown or (args.figure and "maskrcnn" not in models):
        parser.error(f"--models: unknown {sorted(unknown)} (or --figure without maskrcnn)")
    results = []
    for name in models:
        if name == "maskrcnn":
            result, (model, detections) = run_keras_maskrcnn(train, val, args)
            if args.figure:
                from keras_semseg.models.maskrcnn.plots import plot_instances

                print("figure:", *plot_instances(val[:3], detections[:3], args.figure), flush=True)
        else:
            result = (run_unet if name == "unet" else run_torchvision)(train, val, args)
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.json:
            from data.outputs import write_json

            write_json(args.json, {"args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
