"""The demo's last step: score the samples, write metrics.json, the loss plot, comparison grids
and the frame strip, and print the table and where everything is."""
import time

from .pipeline import TASKS, sample_files
from .report import format_table, plot_training_loss, read_progress, write_metrics_json
from .results import (BASELINES, COPY_LAST, LINEAR, common_truth, comparison_grid,
                      grouped_samples, load_videos, margins, score_conditional_task,
                      training_reference)
from .shipped import SHIPPED_STEPS

SOURCES = ("shipped", "this_run")  # run_dir/<source>/<task>: which checkpoint sampled it


def source_labels(cfg, retrained):
    shipped = "retrained" if retrained else "shipped"
    return {"shipped": f"RaMViD, {shipped} checkpoint ({SHIPPED_STEPS} steps)",
            "this_run": f"RaMViD, this run ({cfg.max_steps} steps)"}


def score_tasks(cfg, labels):
    """({task: {method: scores}}, {task: {method: one video per clip}}, {task: truth})."""
    reference = training_reference(cfg.data_dir / "train", cfg.image_size, cfg.seq_len)
    scores, videos, truths = {}, {}, {}
    for task, given in TASKS.items():
        frames = given(cfg.seq_len)
        if frames is None:
            continue
        ours, truth = {}, {}
        for source in SOURCES:
            samples_path, gt_path = sample_files(cfg.run_dir / source / task)
            label = labels[source]
            ours[label], truth[label] = grouped_samples(
                load_videos(samples_path), load_videos(gt_path), frames, cfg.samples_per_clip)
        gt = common_truth(truth)
        scores[task], videos[task] = score_conditional_task(ours, gt, frames, reference)
        truths[task] = gt
    return scores, videos, truths


def write_grids(cfg, labels, videos, truths):
    """Comparison gifs per task and one png frame strip of prediction; {name: path}."""
    files = {}
    for task, by_method in videos.items():
        frames = TASKS[task](cfg.seq_len)
        rows = [labels[s] for s in SOURCES] + [m for m in (LINEAR, COPY_LAST) if m in by_method]
        files[f"{task} vs truth gif"] = comparison_grid(
            cfg.run_dir / f"{task}_vs_truth.gif", truths[task], by_method, frames, rows)
    rows = [labels["shipped"], COPY_LAST]
    files["prediction frame strip"] = comparison_grid(
        cfg.run_dir / "prediction_strip.png", truths["prediction"], videos["prediction"],
        TASKS["prediction"](cfg.seq_len), rows, count=3)
    return files


def table_rows(scores, labels, per_clip):
    rows = []
    for source in SOURCES:
        label = labels[source]
        rows.append((f"{label}: one sample", {t: s[label] for t, s in scores.items()}))
        rows.append((f"{label}: best of {per_clip}",
                     {t: {"psnr": s[label]["psnr_best"], "ssim": s[label]["ssim_best"]}
                      for t, s in scores.items()}))
    for method in BASELINES:
        rows.append((method, {t: s.get(method) for t, s in scores.items()}))
    return rows


def training_summary(progress_csv):
    columns = read_progress(progress_csv)
    head = columns["loss"][: max(1, len(columns["loss"]) // 10)]
    tail = columns["loss"][-max(1, len(columns["loss"]) // 10):]
    return {"steps": int(columns["step"][-1]), "loss_first_10pct": float(head.mean()),
            "loss_last_10pct": float(tail.mean()),
            "samples_per_s": float(columns["samples_per_s"][-1])}


def files_written(cfg, grids, plot):
    files = {"run": cfg.run_dir, "loss plot": plot, "metrics": cfg.run_dir / "metrics.json",
             "short run: checkpoints, logs": cfg.run_dir / "train",
             "short run: previews": cfg.run_dir / "train" / "preview"}
    files.update(grids)
    samples, _ = sample_files(cfg.run_dir / "shipped" / "unconditional")
    files["unconditional npz"] = samples
    unconditional = sorted((cfg.run_dir / "shipped" / "unconditional").rglob("samples_*.gif"))
    if unconditional:
        files["unconditional gif"] = unconditional[0]
    return files


def summarise(cfg, checkpoints, timings, start, retrain_shown, retrained=False):
    labels = source_labels(cfg, retrained)
    scores, videos, truths = score_tasks(cfg, labels)
    train_dir = cfg.run_dir / "train"
    plot = plot_training_loss(train_dir / "progress.csv", cfg.run_dir / "training_loss.png",
                              title=f"this run: demo preset, {cfg.max_steps} steps",
                              preview_csv=train_dir / "preview" / "preview.csv")
    train = training_summary(train_dir / "progress.csv")
    grids = write_grids(cfg, labels, videos, truths)
    timings["total_s"] = time.time() - start
    gains = {source: margins(scores, labels[source]) for source in SOURCES}
    table = format_table(table_rows(scores, labels, cfg.samples_per_clip), list(scores))
    files = files_written(cfg, grids, plot)

    write_metrics_json(cfg.run_dir / "metrics.json", {
        "config": cfg.to_json(), "checkpoints": {labels[k]: str(v) for k, v in checkpoints.items()},
        "shipped_checkpoint_command": retrain_shown, "training": train, "timings_s": timings,
        "scores": scores, "margins": {labels[k]: v for k, v in gains.items()},
        "files": {k: str(v) for k, v in files.items()},
    })

    print(f"\nPSNR / SSIM over the generated frames of {cfg.num_test} held-out clips (given "
          f"frames excluded; higher is better; {cfg.samples_per_clip} samples per clip):\n")
    print(table)
    print()
    for source in SOURCES:
        for task, gain in gains[source].items():
            line = (f"{labels[source]}, {task}: {gain['psnr_gain_over_copy_last_db']:+.2f} dB "
                    f"PSNR, {gain['ssim_gain_over_copy_last']:+.3f} SSIM over {COPY_LAST}")
            if "psnr_gain_over_linear_db" in gain:
                line += (f"; {gain['psnr_gain_over_linear_db']:+.2f} dB, "
                         f"{gain['ssim_gain_over_linear']:+.3f} SSIM over {LINEAR}")
            print(line)
    print(f"this run: training loss {train['loss_first_10pct']:.3f} -> "
          f"{train['loss_last_10pct']:.3f} over {train['steps']} steps")
    print(f"the shipped checkpoint was trained by: {retrain_shown}")
    sampling = sum(v for k, v in timings.items() if k.startswith("sample_"))
    print(f"time: data {timings['data_s']:.0f} s, training {timings['train_s']:.0f} s, sampling "
          f"{sampling:.0f} s, total {timings['total_s']:.0f} s\n")
    width = max(len(k) for k in files)
    for name, path in files.items():
        print(f"  {name.ljust(width)}  {path}")
    print("\nopen the gifs (rows: truth, shipped checkpoint, this run, baselines; "
          "red outline = given frame)")


__all__ = ["SOURCES", "score_tasks", "summarise", "training_summary"]
