"""The demo's last step: score the samples, write metrics.json, the loss plot and comparison
grids, and print the table and where everything is."""
import time

from .pipeline import TASKS, sample_files
from .report import format_table, plot_training_loss, read_progress, write_metrics_json
from .results import (COPY_LAST, METHODS, OURS, comparison_grid, load_videos, margins,
                      score_conditional_task, training_reference)


def score_tasks(cfg):
    """({task: {method: scores}}, {task: comparison grid path}) for the conditional tasks."""
    reference = training_reference(cfg.data_dir / "train", cfg.image_size, cfg.seq_len)
    scores, grids = {}, {}
    for task, given in TASKS.items():
        frames = given(cfg.seq_len)
        if frames is None:
            continue
        samples_path, gt_path = sample_files(cfg.run_dir / task)
        gt = load_videos(gt_path)
        scores[task], videos = score_conditional_task(load_videos(samples_path), gt, frames,
                                                      reference)
        grids[task] = comparison_grid(cfg.run_dir / f"{task}_vs_truth.gif", gt, videos, frames)
    return scores, grids


def training_summary(progress_csv):
    columns = read_progress(progress_csv)
    head = columns["loss"][: max(1, len(columns["loss"]) // 10)]
    tail = columns["loss"][-max(1, len(columns["loss"]) // 10):]
    return {"steps": int(columns["step"][-1]), "loss_first_10pct": float(head.mean()),
            "loss_last_10pct": float(tail.mean()),
            "samples_per_s": float(columns["samples_per_s"][-1])}


def files_written(cfg, grids, plot):
    files = {"run": cfg.run_dir, "loss plot": plot, "metrics": cfg.run_dir / "metrics.json",
             "checkpoints + logs": cfg.run_dir / "train"}
    for task in TASKS:
        samples, _ = sample_files(cfg.run_dir / task)
        files[f"{task} npz"] = samples
        sample_grids = sorted((cfg.run_dir / task).glob("samples_*.gif"))
        if sample_grids:
            files[f"{task} gif"] = sample_grids[0]
    for task, path in grids.items():
        files[f"{task} vs truth gif"] = path
    return files


def summarise(cfg, checkpoint, timings, start):
    scores, grids = score_tasks(cfg)
    progress_csv = cfg.run_dir / "train" / "progress.csv"
    plot = plot_training_loss(progress_csv, cfg.run_dir / "training_loss.png",
                              title=f"demo preset, {cfg.max_steps} steps")
    train = training_summary(progress_csv)
    timings["total_s"] = time.time() - start
    gains = margins(scores)
    table = format_table(scores, METHODS)
    files = files_written(cfg, grids, plot)

    def table_of(psnr_key, ssim_key):
        return {task: {m: {"psnr": s[psnr_key], "ssim": s[ssim_key]} for m, s in by_method.items()}
                for task, by_method in scores.items()}

    write_metrics_json(cfg.run_dir / "metrics.json", {
        "config": cfg.to_json(), "checkpoint": str(checkpoint), "training": train,
        "timings_s": timings,
        "frame_metrics": table_of("psnr", "ssim"),
        "per_clip": table_of("psnr_per_clip", "ssim_per_clip"),
        "margins": gains,
        "files": {k: str(v) for k, v in files.items()},
    })

    print(f"\nPSNR / SSIM over the generated frames of {cfg.num_test} held-out clips "
          f"(given frames excluded; higher is better):\n")
    print(table)
    print()
    for task, gain in gains.items():
        print(f"{task}: ours - {COPY_LAST} = {gain['psnr_gain_over_copy_last_db']:+.2f} dB PSNR, "
              f"{gain['ssim_gain_over_copy_last']:+.3f} SSIM; "
              f"best baseline: {gain['best_baseline']}")
    print(f"training loss {train['loss_first_10pct']:.3f} -> {train['loss_last_10pct']:.3f} over "
          f"{train['steps']} steps")
    print(f"time: data {timings['data_s']:.0f} s, training {timings['train_s']:.0f} s, sampling "
          f"{sum(v for k, v in timings.items() if k.startswith('sample_')):.0f} s, "
          f"total {timings['total_s']:.0f} s\n")
    width = max(len(k) for k in files)
    for name, path in files.items():
        print(f"  {name.ljust(width)}  {path}")
    print(f"\nopen the gifs (rows: truth, {OURS}, {COPY_LAST}; red outline = given frame)")


__all__ = ["score_tasks", "summarise", "training_summary"]
