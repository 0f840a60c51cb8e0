"""Train a small DCGAN on the procedural world (model_rewrite.world) on the CPU.

The generator is our editable `DCGANGenerator`; the discriminator is its DCGAN mirror. The exported generator
is an exponential moving average of the generator's weights whose BatchNorm statistics are recomputed at
export time, written with `model_rewrite.export.export_model` so `load_generator(path)` reloads it. Beside it,
`train_log.json` records the exact command, seed, git commit, duration and losses.

    nice -n 10 python benchmarks/world/train_world_gan.py --minutes 40 --seed 0
    python benchmarks/world/train_world_gan.py --device cuda --minutes 6 --batch 64   # on a GPU

The discriminator is written too (`world_disc.safetensors`, used as the feature term of the benchmark's
fine-tune-all baseline).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model_rewrite.export import export_model
from model_rewrite.models import model_info
from model_rewrite.models.dcgan import DCGANGenerator
from world import label_fractions, labels_from_image, rule_statistics, scenes_from_seeds

HERE = Path(__file__).resolve().parent
TRAIN_SEEDS_START = 0  # training scenes are seeds 0..data-1; held-out scenes start at 1_000_000


class WorldDiscriminator(nn.Module):
    """DCGAN discriminator for 64x64 images: (N, 3, 64, 64) -> logits (N,)."""

    def __init__(self, ndf: int = 32, nc: int = 3) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, norm: bool) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not norm)] + ([nn.BatchNorm2d(c_out)] if norm else []) + [nn.LeakyReLU(0.2)]

        self.main = nn.Sequential(*block(nc, ndf, False), *block(ndf, ndf * 2, True), *block(ndf * 2, ndf * 4, True),
                                  *block(ndf * 4, ndf * 8, True), nn.Conv2d(ndf * 8, 1, 4, 1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


@torch.no_grad()
def recompute_batchnorm(g: DCGANGenerator, nz: int, gen: torch.Generator, batches: int = 20, batch: int = 128) -> None:
    """Set BatchNorm running statistics to the exact average over `batches` random batches (eval-mode export)."""
    for m in g.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    g.train()
    for _ in range(batches):
        g(torch.randn(batch, nz, 1, 1, generator=gen))
    for m in g.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    g.eval()


def _git_commit(given: str = "") -> str:
    if given:
        return given
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", str(HERE / "train_world_gan.py"), "src/model_rewrite/world.py"],
                               cwd=HERE.parent.parent, capture_output=True, text=True).stdout.strip()
        return sha + ("+uncommitted-changes" if dirty else "")
    except OSError:
        return "unknown"


def export(ema: DCGANGenerator, args: argparse.Namespace, log: dict, out: Path, d: nn.Module | None = None) -> None:
    g = copy.deepcopy(ema).cpu()
    recompute_batchnorm(g, args.nz, torch.Generator().manual_seed(args.seed + 1))
    info = model_info(g, "world_gan", "benchmarks/world/train_world_gan.py")
    export_model(g, info, out)
    with torch.no_grad():
        imgs = g(torch.randn(256, args.nz, 1, 1, generator=torch.Generator().manual_seed(12345)))
    labels = labels_from_image(imgs.permute(0, 2, 3, 1).numpy())
    log["samples_rules"] = rule_statistics(labels)
    log["samples_fractions"] = label_fractions(labels).round(5).tolist()
    log["fingerprint"] = info.fingerprint
    if d is not None:
        from model_rewrite.cache import save_tensors

        save_tensors(out.parent / "world_disc.safetensors", {k: v.cpu() for k, v in d.state_dict().items()},
                     {"kind": "world_discriminator", "ndf": args.ndf, "steps": log.get("steps")})
    (out.parent / "train_log.json").write_text(json.dumps(log, indent=1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=40.0, help="hard wall-clock limit of the training loop")
    p.add_argument("--max-steps", type=int, default=10**9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nz", type=int, default=64)
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--ndf", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--data", type=int, default=20000, help="number of training scenes (seeds 0..data-1)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--snapshots", default="", help="comma-separated steps at which to also export to OUT_DIR/s{step}/")
    p.add_argument("--commit", default="", help="commit to record where git is unavailable (a copied tree)")
    p.add_argument("--export-every-min", type=float, default=5.0)
    p.add_argument("--out", type=Path, default=HERE / "world_gan.safetensors")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()
    images, labels = scenes_from_seeds(range(TRAIN_SEEDS_START, TRAIN_SEEDS_START + args.data))
    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    data = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(dev)  # (N, 3, 64, 64) in [-1, 1]
    t_data = time.time() - t_start
    g = DCGANGenerator(nz=args.nz, ngf=args.ngf, nc=3, resolution=64)
    d = WorldDiscriminator(args.ndf)
    g.apply(_init_weights)
    d.apply(_init_weights)
    g, d = g.to(dev), d.to(dev)
    ema = copy.deepcopy(g).eval()
    opt_g = torch.optim.Adam(g.parameters(), args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), args.lr, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(args.seed)
    log = {"command": "python " + " ".join([str(Path(sys.argv[0]))] + (argv if argv is not None else sys.argv[1:])),
           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "seed": args.seed, "commit": _git_commit(args.commit), "torch": torch.__version__, "threads": args.threads,
           "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "data_seconds": round(t_data, 1), "training_rules": rule_statistics(labels[:2000]),
           "training_fractions": label_fractions(labels).round(5).tolist(), "losses": []}
    snapshots = {int(x) for x in args.snapshots.split(",") if x}
    step, last_export, t0 = 0, time.time(), time.time()
    ones, zeros = torch.ones(args.batch, device=dev), torch.zeros(args.batch, device=dev)
    while time.time() - t0 < args.minutes * 60 and step < args.max_steps:
        idx = torch.randint(len(data), (args.batch,), generator=gen)
        real = data[idx.to(dev)]
        flip = (torch.rand(args.batch, generator=gen) < 0.5).to(dev)
        real = torch.where(flip[:, None, None, None], real.flip(3), real)
        z = torch.randn(args.batch, args.nz, 1, 1, generator=gen).to(dev)
        fake = g(z)
        loss_d = bce(d(real), ones) + bce(d(fake.detach()), zeros)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = bce(d(fake), ones)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for pe, pg in zip(ema.parameters(), g.parameters()):
                pe.lerp_(pg, 1 - decay)
        step += 1
        if step % (50 if dev.type == "cpu" else 1000) == 0:
            log["losses"].append([step, round(time.time() - t0, 1), round(loss_d.item(), 4), round(loss_g.item(), 4)])
            print(f"step {step} t={time.time() - t0:.0f}s loss_d={loss_d.item():.3f} loss_g={loss_g.item():.3f}", flush=True)
        if step in snapshots:
            snap = dict(log, steps=step, train_seconds=round(time.time() - t0, 1), finished=False)
            export(ema, args, snap, args.out.parent / f"s{step}" / args.out.name, d)
        if time.time() - last_export > args.export_every_min * 60:
            log.update(steps=step, train_seconds=round(time.time() - t0, 1), finished=False)
            export(ema, args, log, args.out)
            torch.save({"g": g.state_dict(), "d": d.state_dict(), "ema": ema.state_dict(), "step": step}, args.out.with_suffix(".state.pt"))
            last_export = time.time()
    log.update(steps=step, train_seconds=round(time.time() - t0, 1), finished=True)
    export(ema, args, log, args.out, d)
    print(json.dumps({k: log[k] for k in ("steps", "train_seconds", "samples_rules", "training_rules")}, indent=1))


if __name__ == "__main__":
    main()
