"""Pretrain the small ViT FM of the vision path on Fashion-MNIST (it stands in for ImageNet pretraining: no ViT
weights can be fetched offline). Saves the backbone (ViTModel with pooler) and an image processor, so that
AutoModelForImageClassification.from_pretrained(out, num_labels=...) gets a fresh head.

    python scripts/pretrain_vit.py --data datasets/fashion-mnist --out pretrain_models/vit-tiny-fashion-mnist
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm


def tensors(split, normalise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    images = np.stack([np.asarray(img, dtype=np.uint8) for img in split["image"]])
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    if normalise:
        x = (x - 0.5) / 0.5
    return x, torch.tensor(split["label"])


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 2-pixel padding and horizontal flip, batched."""
    b = x.shape[0]
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()
    x = padded[:, :, dy : dy + 28, dx : dx + 28]
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="datasets/fashion-mnist")
    p.add_argument("--out", default="pretrain_models/vit-tiny-fashion-mnist")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the 60k images (about 6 minutes on 2 cores)")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--max_steps", type=int, default=0, help="stop early (quick checks)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, ViTModel, get_scheduler

    import datasets

    if not (Path(args.data) / "dataset_dict.json").exists():
        print(f"error: {args.data} not found; run bash scripts/fetch_assets.sh", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    data = datasets.load_from_disk(args.data)
    x_train, y_train = tensors(data["train"])
    x_test, y_test = tensors(data["test"])
    names = data["train"].features["label"].names
    config = ViTConfig(
        image_size=28,
        patch_size=4,
        num_channels=1,
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=3,
        intermediate_size=768,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    model = ViTForImageClassification(config)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total = math.ceil(args.epochs * steps_per_epoch)
    if args.max_steps:
        total = min(total, args.max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.05)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=max(1, total // 20), num_training_steps=total)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    model.train()
    step = 0
    bar = tqdm(total=total, desc="pretrain ViT")
    while step < total:
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), args.batch_size):
            if step >= total:
                break
            idx = order[start : start + args.batch_size]
            loss = model(pixel_values=augment(x_train[idx], generator), labels=y_train[idx]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x_test), 512):
            logits = model(pixel_values=x_test[start : start + 512]).logits
            correct += (logits.argmax(-1) == y_test[start : start + 512]).sum().item()
    accuracy = correct / len(x_test)
    seconds = time.perf_counter() - started
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    backbone = ViTModel(
        ViTConfig(**{k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}),
        add_pooling_layer=True,
    )
    missing, unexpected = backbone.load_state_dict(model.vit.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("pooler.") for k in missing), (missing, unexpected)
    backbone.save_pretrained(tmp)
    ViTImageProcessor(
        size={"height": 28, "width": 28}, image_mean=[0.5], image_std=[0.5], do_resize=False
    ).save_pretrained(tmp)
    info = {
        "fashion_mnist_test_accuracy": accuracy,
        "epochs": args.epochs,
        "steps": step,
        "seconds": seconds,
        "seed": args.seed,
        "architecture": "ViT 6 layers, hidden 192, 3 heads, FFN 768, patch 4, 28x28x1",
    }
    (tmp / "pretrain_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (tmp / "README.md").write_text(
        "# vit-tiny-fashion-mnist\n\nA small ViT (6 layers, hidden 192, FFN 768, patch 4 on 28x28x1) pretrained by "
        "`scripts/pretrain_vit.py` on Fashion-MNIST train. It stands in for ImageNet pretraining, because no ViT "
        f"weights can be fetched offline.\n\nFashion-MNIST test accuracy: {accuracy:.4f} after {step} steps "
        f"({args.epochs} epochs, seed {args.seed}, {seconds:.0f} s on this machine). The folder holds the backbone "
        "(ViTModel with pooler); the classification head is not included.\n"
    )
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"[assets] ViT FM: Fashion-MNIST test accuracy {accuracy:.4f}, {step} steps, {seconds:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
