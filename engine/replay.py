"""Replay a recorded gradient explosion: which samples of the batch carry the loss and the gradient.

    python -m engine.replay run_42 [--step N] [--checkpoint CKPT] [--runs-dir DIR]

Loads a batch the trainer saved in explosions/ (by default the event with the largest grad norm) and
runs every sample alone through the run's network, printing its losses and grad norm, then the whole batch.
Under DDP the batch is the global one (every rank's share), so its row sets the same figures beside the logged
ones: the losses averaged over the ranks and the averaged gradient's norm. The weights are a checkpoint's (the
run's last by default), so the figures are those of that step's weights, not exactly the logged ones, unless
the checkpoint was written just before the event.
"""

import math
import sys

import torch
from rich.table import Table

import engine
from engine import terminal
from engine.data import tensors
from engine.errors import UserError, cli, parser
from engine.model import execution
from engine.model.losses import irn_losses, network_passes
from engine.training import checkpoints, config
from engine.training.config import flag_type
from profiling import records


def pick_event(folder, step):
    """The recorded event at `step`, or the one with the largest grad norm, among those with a saved batch."""
    events = [e for e in records.read_jsonl(folder / records.EXPLOSIONS) if e.get("batch_file")]
    if not events:
        raise UserError(f"{folder} has no recorded explosion with a saved batch; nothing to replay")
    if step is None:
        return max(events, key=lambda e: e["grad_norm"] if math.isfinite(e["grad_norm"]) else math.inf)
    for event in events:
        if event["step"] == step:
            return event
    raise UserError(f"no saved batch for step {step}; steps with one: {', '.join(str(e['step']) for e in events[:20])}")


def losses_and_grad_norm(model, hr, lr_ref, noise, cfg):
    """Losses and the grad norm of the training objective for a batch (one sample or all)."""
    model.zero_grad(set_to_none=True)
    y, z, reconstruction = network_passes(model, hr, noise, cfg.z_scale)
    losses = irn_losses(y, z, reconstruction, hr, lr_ref, **cfg.loss_weights)
    sum(losses.values()).backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]).item()
    return {k: v.item() for k, v in losses.items()}, norm


def replay(folder, event, weights, device="cpu"):
    """[(sample, image, crop box, losses, grad norm)] for each sample of the event's batch, then the whole batch."""
    cfg = config.from_record(records.read_config(folder))
    if cfg.crm or cfg.codec != "none":
        raise UserError(f"{folder} trains through --codec {cfg.codec}: replay reruns IRN's lossless losses only")
    model = engine.load(weights, device=device).train()
    batch = torch.load(folder / event["batch_file"], weights_only=True)
    parts = [(str(i), event["images"][i], str(event["boxes"][i]), slice(i, i + 1)) for i in range(len(batch["hr"]))]
    rows = []
    for name, image, box, part in [*parts, ("batch", "all", "", slice(None))]:
        hr = tensors.to_float(batch["hr"][part].to(device))
        # batches of runs before the official LR reference carry none: theirs was bicubic on the crop
        lr_ref = batch["lr_ref"][part].to(device) if "lr_ref" in batch else tensors.bicubic_down(hr, cfg.scale)
        rows.append((name, image, box, *losses_and_grad_norm(model, hr, lr_ref, batch["noise"][part].to(device), cfg)))
    return rows


@cli
def main(argv=None):
    p = parser("python -m engine.replay", __doc__)
    p.add_argument("run", help="a run name under the runs folder, or a path")
    p.add_argument(
        "--step",
        type=flag_type(int, config.integer(1)),
        help="the recorded step to replay, counted from 1 as the trainer does (default: the largest grad norm)",
    )
    p.add_argument("--checkpoint", help="weights to replay with (default: the run's checkpoints/last.pt)")
    p.add_argument("--device", default="auto", help=f"{execution.DEVICE_CHOICES} (default: auto)")
    p.add_argument(
        "--runs-dir",
        metavar="DIR",
        help=f"where run names are looked up (default: ${records.RUNS_VARIABLE}, else runs/)",
    )
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    device = execution.device_for(args.device)
    folder = records.find(args.run, args.runs_dir)
    event = pick_event(folder, args.step)
    weights = args.checkpoint or folder / records.CHECKPOINTS / checkpoints.LATEST
    console = terminal.console()
    ranks = event.get("world_size", 1)
    shares = f", the shares of its {ranks} ranks" if ranks > 1 else ""
    console.print(
        f"step {event['step']}: {event['kind']}, logged grad norm {event['grad_norm']:.4g}; its batch of "
        f"{len(event['images'])}{shares}, replayed with the weights of {weights}"
    )
    table = Table()
    for column in ("sample", "image", "crop box (top, left, h, w)", *event["losses"], "grad norm"):
        table.add_column(column, justify="left" if column in ("image", "crop box (top, left, h, w)") else "right")
    for name, image, box, losses, norm in replay(folder, event, weights, device):
        table.add_row(name, image, box, *(f"{v:.4g}" for v in losses.values()), f"{norm:.4g}")
    console.print(table)


if __name__ == "__main__":
    main()
