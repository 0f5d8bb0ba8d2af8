"""SAM decoder: N boxes of one image in one batched call vs one call per box (image embedding excluded).

The prompt encoder and mask decoder are the same for vit_h, vit_l and vit_b; what they see
is the 256 x 64 x 64 embedding of a 1024-pixel input. By default the embedding is a random
tensor of that shape (the decoder's cost does not depend on its values); ``--real-embedding``
runs the image encoder once first (not timed). Weights are random. Times the prompt
encoder + mask decoder alone and ``decode_prompts`` end to end (with SAM's upscaling of
each kept mask to the image), batched and one box per call; prints the ratios and how many
mask pixels differ between the two ways (float rounding at the 0 threshold).

    nice -n 10 .venv/bin/python benches/bench_sam_decoder.py --boxes 40 --repeats 5
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
    parser.add_argument("--variant", default="vit_b")
    parser.add_argument("--boxes", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=1024, help="side of the synthetic dense micrograph the boxes come from")
    parser.add_argument("--mode", default="box", choices=("box", "box_point", "box_mask"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core machine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--real-embedding", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from data.synthetic import generate
    from torch_instseg.maskrcnn import labels_to_instances
    from torch_instseg.sam import ImageEmbedding, build_sam, decode_prompts, embed_image

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sample = generate(1, args.image_size, "dense", seed=0)[0]
    masks, boxes = labels_to_instances(sample.labels)
    while len(boxes) < args.boxes:
        masks, boxes = np.concatenate([masks, masks]), np.concatenate([boxes, boxes])
    masks, boxes = masks[: args.boxes], boxes[: args.boxes]
    sam = build_sam(args.variant, "none", device=args.device)
    if args.real_embedding:
        embedding = embed_image(sam, sample.image)
    else:
        side = sam.image_encoder.img_size
        scale = side / max(sample.image.shape[:2])
        input_size = (int(sample.image.shape[0] * scale + 0.5), int(sample.image.shape[1] * scale + 0.5))
        features = torch.randn(1, 256, side // 16, side // 16, device=sam.device)
        embedding = ImageEmbedding(features, input_size, sample.image.shape[:2])
    probs = masks.astype(np.float32)

    def synchronize() -> None:
        if sam.device.type == "cuda":
            torch.cuda.synchronize()

    def end_to_end(batch_size: int):
        synchronize()
        started = time.perf_counter()
        result = decode_prompts(sam, embedding, boxes, args.mode, masks, probs, batch_size=batch_size)
        synchronize()
        return time.perf_counter() - started, result

    from segment_anything.utils.transforms import ResizeLongestSide

    transform = ResizeLongestSide(sam.image_encoder.img_size)
    box_tensor = transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float32), embedding.original_size).to(sam.device)
    image_pe = sam.prompt_encoder.get_dense_pe()

    def network_only(batch_size: int) -> float:
        synchronize()
        started = time.perf_counter()
        with torch.no_grad():
            for start in range(0, len(box_tensor), batch_size):
                sparse, dense = sam.prompt_encoder(points=None, boxes=box_tensor[start:start + batch_size], masks=None)
                sam.mask_decoder(image_embeddings=embedding.features, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                                 dense_prompt_embeddings=dense, multimask_output=True)
        synchronize()
        return time.perf_counter() - started

    end_to_end(args.batch_size)
    end_to_end(1)
    times = {"network batched": [], "network one-by-one": [], "end-to-end batched": [], "end-to-end one-by-one": []}
    for _ in range(args.repeats):
        times["network batched"].append(network_only(args.batch_size))
        times["network one-by-one"].append(network_only(1))
        seconds, batched = end_to_end(args.batch_size)
        times["end-to-end batched"].append(seconds)
        seconds, single = end_to_end(1)
        times["end-to-end one-by-one"].append(seconds)
    median = {key: statistics.median(values) for key, values in times.items()}
    differing = int((batched[0] != single[0]).sum())
    print(f"SAM {args.variant} (random weights), mode {args.mode}, {args.boxes} boxes on a {args.image_size} px image, "
          f"device {args.device}, {args.threads} CPU thread(s), median of {args.repeats}; embedding excluded")
    for key, value in median.items():
        print(f"  {key:24s} {value * 1000:9.1f} ms")
    print(f"  ratio one-by-one / batched: prompt encoder + mask decoder {median['network one-by-one'] / median['network batched']:.2f}x, "
          f"end to end (with upscaling to the image) {median['end-to-end one-by-one'] / median['end-to-end batched']:.2f}x")
    print(f"  masks: {differing} of {batched[0].size} pixels differ between the two ways; "
          f"max |IoU difference| {float(np.nanmax(np.abs(batched[1] - single[1]))):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
