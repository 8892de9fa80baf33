"""The training report: report.json, report.md and loss.png next to the trained decoder."""

from __future__ import annotations

import io
import json
import posixpath

from pipelines.sinks.storage import open_output

# lpips_test_only: the LPIPS term computed with trunk weights that are not the published ones (decoders/metrics.py).
LOSS_TERMS = ("pixel", "kl", "lpips", "lpips_test_only", "adversarial", "discriminator", "total")


def summarize(spec, config: dict, history: list[dict], metrics: dict, resumed_from: int | None,
              latent_scaling: dict | None = None) -> dict:
    """`latent_scaling`: the scaling the trained model carries, where it is measured after training
    (an autoencoder's); by default the one the driver measured on the training latents."""
    seconds = sum(h["seconds"] for h in history)
    images = len(history) * spec.optim.batch_size * spec.scaling.num_workers
    resource = "GPU" if config["use_gpu"] else "CPU"
    last = history[-10:]
    return {
        "name": spec.name,
        "kind": spec.kind,
        "architecture": spec.architecture,
        "target": spec.target,
        # target reference: whose decode the decoder learned (the encoder's VAE, e.g. a teacher)
        "reference_model": config["prepared"].get("reference_model"),
        "product": spec.product_dir,
        "steps": len(history),
        "workers": spec.scaling.num_workers,
        "resource": resource,
        # Allocated resources x step time, as generation reports count them; loading and eval excluded.
        f"{resource.lower()}_seconds": sum(h["resource_s"] for h in history),
        "train_seconds": seconds,
        "images_seen": images,
        "images_per_s": images / seconds if seconds else None,
        "train_samples": config["prepared"]["train_samples"],
        "held_out_samples": config["prepared"]["held_out_samples"],
        "latent_scaling": latent_scaling or config["prepared"]["latent_scaling"] or None,
        "resumed_from_step": resumed_from,
        "final_loss": {k: sum(h[k] for h in last) / len(last) for k in LOSS_TERMS if k in last[-1]},
        "held_out": metrics,
        "history": history,
    }


def render_markdown(report: dict) -> str:
    r = report
    lines = [
        f"# Training report: {r['name']} ({r['architecture']}, target {r['target']})",
        "",
        f"- steps: {r['steps']} on {r['workers']} {r['resource']} workers"
        + (f", resumed from step {r['resumed_from_step']}" if r["resumed_from_step"] else ""),
        f"- images seen: {r['images_seen']} at {r['images_per_s']:.1f} images/s; "
        f"{r['resource']}-seconds (allocated): {r[r['resource'].lower() + '_seconds']:.0f}",
        f"- data: {r['train_samples']} training samples, {r['held_out_samples']} held out",
        "- latents normalised in the decoder: " + (
            "scaling_factor {scaling_factor:.6g}, shift_factor {shift_factor:.6g}".format(**r["latent_scaling"])
            if r.get("latent_scaling") else "no (the architecture's or init_weights' own scaling)"),
        "",
        "| loss term | mean of the last 10 steps |",
        "| --- | --- |",
        *[f"| {k} | {v:.4f} |" for k, v in r["final_loss"].items()],
        "",
        f"Held-out metrics ({r['held_out']['held_out_samples']} samples, against the original images):",
        "",
        "| metric | value |",
        "| --- | --- |",
        *[f"| {k} | {r['held_out'][k]:.4f} |" for k in ("psnr", "ssim", "lpips", "lpips_test_only") if k in r["held_out"]],
        "",
        *_baseline_lines(r["held_out"]),
        f"LPIPS: {r['held_out']['lpips_status']}",
        "",
        "![loss curve](loss.png)",
    ]
    return "\n".join(lines) + "\n"


def _baseline_lines(held_out: dict) -> list[str]:
    """The mean-colour baseline's scores on the same held-out images, where the training measured it."""
    base = held_out.get("mean_colour_baseline")
    if not base:
        return []
    return [f"The training images' mean colour {base['colour']} as a constant image, on the same held-out "
            f"images: PSNR {base['psnr']:.4f}, SSIM {base['ssim']:.4f} (the model: "
            f"{held_out['psnr'] - base['psnr']:+.2f} dB).", ""]


def loss_chart(history: list[dict]) -> bytes:
    """One small panel per loss term, each on its own y axis (log where every value is positive):
    on one shared axis the total hid the pixel term under it and small terms lay flat at zero."""
    # lazy: keeps matplotlib out of processes that never call this
    import matplotlib

    matplotlib.use("Agg")
    # lazy: keeps matplotlib out of processes that never call this
    from matplotlib.figure import Figure

    terms = [t for t in LOSS_TERMS if any(t in h for h in history)]
    fig = Figure(figsize=(8, 1.7 * len(terms) + 0.8), dpi=100, layout="constrained")
    axes = fig.subplots(len(terms), 1, sharex=True, squeeze=False)[:, 0]
    for i, (term, ax) in enumerate(zip(terms, axes)):
        points = [(h["step"], h[term]) for h in history if term in h]
        ax.plot([s for s, _ in points], [v for _, v in points], color=f"C{i}", linewidth=1.2)
        ax.set_yscale("log" if all(v > 0 for _, v in points) else "linear")
        ax.set_ylabel(term, fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.suptitle("training loss per term (weighted; own y axis each)", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_report(spec, config: dict, history: list[dict], metrics: dict, resumed_from: int | None,
                 latent_scaling: dict | None = None) -> dict:
    report = summarize(spec, config, history, metrics, resumed_from, latent_scaling)
    fs, root = open_output(spec.output.url, spec.output.storage)
    files = {"report.json": json.dumps(report, indent=2).encode(), "report.md": render_markdown(report).encode(),
             "loss.png": loss_chart(history)}
    for name, data in files.items():
        with fs.open(posixpath.join(root, name), "wb") as f:
            f.write(data)
    return report


def schedule_lines(spec) -> list[str]:
    """The `--dry-run` lines every training kind shares: its optimiser, workers and checkpoints."""
    o, s = spec.optim, spec.scaling
    return [
        f"  optim: {o.steps} steps, batch {o.batch_size} per worker, lr {o.lr:g}, precision {o.precision}; "
        f"workers: {s.num_workers} (use_gpu {s.use_gpu}, {s.cpus_per_worker:g} CPUs each)",
        f"  checkpoints: every {spec.checkpoints.every_steps} steps to {spec.checkpoint_url}",
    ]


def summary_line(report: dict, output_url: str) -> str:
    held, product = report["held_out"], report.get("product", "decoder")
    if report.get("nothing_to_do"):
        return (f"{report['name']}: nothing to do: {output_url.rstrip('/')} holds this training, finished "
                f"({report['steps']} steps; held-out PSNR {held['psnr']:.2f} dB); report "
                f"{output_url.rstrip('/')}/report.md")
    return (
        f"{report['name']}: trained {report['architecture']} for {report['steps']} steps "
        f"({report['images_per_s']:.1f} images/s); held-out PSNR {held['psnr']:.2f} dB, SSIM {held['ssim']:.4f}"
        + (f" ({held['psnr_over_mean_colour_db']:+.2f} dB over the mean colour)" if "mean_colour_baseline" in held
           else "") + "; "
        + f"{product} {output_url.rstrip('/')}/{product}, report {output_url.rstrip('/')}/report.md"
    )
