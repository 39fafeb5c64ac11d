"""Report the synthetic study over seeds: seaborn figures with 95 % bands and a Markdown page that leads with the
finding and says which differences exceed the seed spread."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from wdlab import figures, stage
from wdlab.files import RunFolder, read_json, read_table
from wdlab.regularizers import BASELINE, REGISTRY
from wdlab.results import fmt_lambda, markdown_table, pm, separated
from wdlab.settings import Settings
from wdlab.tracking import Tracker

HISTORY_COLUMNS = ("seed", "lambda", "epoch", "train_loss", "test_loss", "w_norm")
BY_SEED_COLUMNS = (
    "regularizer",
    "seed",
    "lambda",
    "train_loss",
    "test_loss",
    "w_norm",
    "zeros",
    "cv_loss",
    "reference_test_loss",
    "reference_w_norm",
    "diverged",
)
# The reference implementation's range over 10 seeds (shared/REFERENCE.md §2), for the reference setup only.
REFERENCE_BANDS = {
    ("scratch", 0.0): {"w_norm": (12.8, 15.0), "train_loss": (4e-7, 1e-4), "test_loss": (70, 112)},
    ("scratch", 3.0): {"w_norm": (0.35, 0.43), "train_loss": (4e-4, 3e-3), "test_loss": (0.058, 0.135)},
    ("concise", 0.0): {"w_norm": (12.8, 15.0), "test_loss": (56, 153)},
    ("concise", 3.0): {"w_norm": (0.37, 0.50), "train_loss": (8e-4, 1e-2), "test_loss": (0.09, 0.74)},
}
REFERENCE_SETUP = {
    "n_train": 20,
    "n_test": 100,
    "n_features": 200,
    "batch_size": 5,
    "lr": 0.003,
    "epochs": 100,
    "init_std": 1.0,
}


def main(settings: Settings, args: argparse.Namespace) -> None:
    metrics = read_json(args.metrics, made_by="evaluate_synthetic")
    regularizer = settings.synthetic.regularizer
    by_seed = read_table(args.by_seed, "evaluate_synthetic", required=BY_SEED_COLUMNS)
    by_seed = by_seed[by_seed["regularizer"] == regularizer]
    folder = RunFolder(args.grids / regularizer)
    grid_history = read_table(folder.history, f"train_synthetic@{regularizer}", required=HISTORY_COLUMNS)
    contrast = metrics["cv"]["best_lambda"]  # the regularised run shown beside λ = 0

    figures.set_theme()
    pngs = [
        plot_loss_curves(grid_history, contrast, regularizer, args.figures / "loss_curves.png"),
        plot_loss_vs_lambda(by_seed, metrics, regularizer, args.figures / "loss_vs_lambda.png"),
        plot_norm_vs_lambda(
            by_seed, regularizer, settings.synthetic.train.epochs, args.figures / "wnorm_vs_lambda.png"
        ),
        plot_norm_vs_epoch(grid_history, regularizer, args.figures / "wnorm_vs_epoch.png"),
        plot_cv_choices(metrics, regularizer, args.figures / "cv_choices.png"),
    ]
    page = render_page(metrics, by_seed, contrast, settings, figures.relative_to_page(pngs, args.page))
    records = {f"train_synthetic@{regularizer}": folder.record}
    figures.publish(args.page, page, pngs, Tracker(settings.tracking, settings.tracking.experiment_synthetic), records)


# ── figures: every curve is the mean over seeds with its 95 % confidence band ────────────────────


def plot_loss_curves(grid_history: pd.DataFrame, contrast: float | None, regularizer: str, path: Path) -> Path:
    shown = (0.0,) if contrast is None else (0.0, contrast)  # None: cross-validation chose no strength
    runs = {strength: grid_history[grid_history["lambda"] == strength] for strength in shown}
    fig, axes = plt.subplots(1, len(runs), figsize=(11, 4.2), sharey=True, squeeze=False)
    for ax, (strength, history) in zip(axes[0], runs.items()):
        long = history.melt(
            id_vars=["seed", "epoch"], value_vars=["train_loss", "test_loss"], var_name="split", value_name="loss"
        )
        long["split"] = long["split"].str.removesuffix("_loss")
        sns.lineplot(data=long, x="epoch", y="loss", hue="split", ax=ax, **figures.SEED_BAND)
        ax.set(
            yscale="log",
            title=f"{regularizer}, {REGISTRY[regularizer].symbol} = {fmt_lambda(strength)}",
            xlabel="epoch",
            ylabel="squared loss (ŷ − y)²/2",
        )
    fig.suptitle(
        "Without a regulariser the test loss stays high while the train loss vanishes\n"
        f"({figures.band_note(grid_history)})"
    )
    return figures.save(fig, path)


def plot_loss_vs_lambda(by_seed: pd.DataFrame, metrics: dict, regularizer: str, path: Path) -> Path:
    curves = {
        "train_loss": "SGD train",
        "test_loss": "SGD test",
        "cv_loss": "SGD cross-validation",
        "reference_test_loss": f"{REGISTRY[regularizer].exact} test",
    }
    long = by_seed.melt(id_vars=["seed", "lambda"], value_vars=list(curves), var_name="curve", value_name="loss")
    long["curve"] = long["curve"].map(curves)
    fig, ax = plt.subplots(figsize=(10, 4.8))
    figures.curves_vs_strength(ax, long, "loss", "curve")
    ax.axhline(metrics["reference"]["noise_floor"], color="grey", linestyle=":", label="noise floor σ²/2")
    if metrics["cv"]["best_lambda"] is not None:
        ax.axvline(
            metrics["cv"]["best_lambda"],
            color="black",
            linestyle="--",
            linewidth=1,
            label="strength with the lowest mean CV loss",
        )
    figures.lambda_axis(ax, by_seed["lambda"])
    ax.set(
        yscale="log",
        xlabel=REGISTRY[regularizer].strength_label,
        ylabel="final squared loss",
        title=f"{regularizer}: final losses as the strength grows\n({figures.band_note(by_seed)})",
    )
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return figures.save(fig, path)


def plot_norm_vs_lambda(by_seed: pd.DataFrame, regularizer: str, epochs: int, path: Path) -> Path:
    long = by_seed.melt(
        id_vars=["seed", "lambda"], value_vars=["w_norm", "reference_w_norm"], var_name="model", value_name="norm"
    )
    long["model"] = long["model"].map(
        {"w_norm": f"SGD, {epochs}-epoch budget", "reference_w_norm": REGISTRY[regularizer].exact}
    )
    fig, ax = plt.subplots(figsize=(7, 4.5))
    figures.curves_vs_strength(ax, long, "norm", "model")
    figures.lambda_axis(ax, by_seed["lambda"])
    ax.set(
        yscale="log",
        xlabel=REGISTRY[regularizer].strength_label,
        ylabel="‖w‖₂",
        title=f"{regularizer} shrinks the weights\n({figures.band_note(by_seed)})",
    )
    return figures.save(fig, path)


def plot_norm_vs_epoch(grid_history: pd.DataFrame, regularizer: str, path: Path) -> Path:
    strengths = sorted(grid_history["lambda"].unique())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(
        data=grid_history,
        x="epoch",
        y="w_norm",
        hue="lambda",
        palette=figures.lambda_palette(strengths),
        ax=ax,
        **figures.SEED_BAND,
    )
    ax.set(yscale="log", xlabel="epoch", ylabel="‖w‖₂", title=REGISTRY[regularizer].epoch_shrink)
    ax.legend(title=REGISTRY[regularizer].symbol, fontsize="small", ncols=2)
    return figures.save(fig, path)


def plot_cv_choices(metrics: dict, regularizer: str, path: Path) -> Path:
    chosen = {float(key.removeprefix("lambda_")): n for key, n in metrics["cv"]["chosen"].items()}
    fig, ax = plt.subplots(figsize=(7, 3.8))
    sns.barplot(
        x=[fmt_lambda(strength) for strength in chosen], y=list(chosen.values()), color=sns.color_palette()[0], ax=ax
    )
    ax.set(
        xlabel=REGISTRY[regularizer].strength_label,
        ylabel="seeds",
        title=f"The {REGISTRY[regularizer].symbol} each seed's {metrics['cv']['folds']}-fold cross-validation chooses",
    )
    ax.yaxis.get_major_locator().set_params(integer=True)
    return figures.save(fig, path)


# ── the page ──────────────────────────────────────────────────────────────────────────────────────


def render_page(
    metrics: dict, by_seed: pd.DataFrame, contrast: float | None, settings: Settings, figure_links: list[str]
) -> str:
    spec, grid = settings.synthetic, metrics["grid"]
    regularizer = spec.regularizer
    title = (
        "Weight decay"
        if regularizer == BASELINE
        else f"The `{regularizer}` regulariser ({REGISTRY[regularizer].strength_label})"
    )
    lines = [
        f"# {title} on high-dimensional linear regression",
        "",
        "_Every regulariser side by side: [the comparison page](regularizers_synthetic.md). "
        "This page studies `synthetic.regularizer`; `dvc exp run -S synthetic.regularizer=l1` turns it to L1._",
        "",
        f"_n_train = {spec.data.n_train}, n_test = {spec.data.n_test}, d = {spec.data.n_features}; "
        f"SGD, batch {spec.train.batch_size}, lr {spec.train.lr:g}, {spec.train.epochs} epochs, "
        f"`{spec.train.implementation}` implementation; {metrics['seeds']} seeds, each with its own data draw, "
        "initial weights, batch order and folds. Numbers are means over seeds ± their standard deviation; "
        "figures show the mean with its 95 % confidence band._",
        "",
        "## Finding",
        "",
    ]
    if contrast is not None and "lambda_0" in grid and f"lambda_{contrast:g}" in grid:
        lines += [finding(grid["lambda_0"], grid[f"lambda_{contrast:g}"], contrast, regularizer, spec.data.n_train), ""]
    lines += [
        cv_sentence(metrics, regularizer, spec.strength_grid),
        "",
        optimum_sentence(grid, metrics, regularizer, spec.train.epochs),
        "",
    ]
    lines += [
        "_This page is about the grid, so `dvc exp run -S wd=3` leaves it as it is: that experiment changes the "
        "headline run alone, whose numbers are in `metrics/synthetic_headline.json` (`dvc exp show`, "
        "`dvc metrics diff`) and its per-epoch curves in `dvc plots` (`results/synthetic/headline_curve.csv`)._",
        "",
    ]
    if reference := reference_table(by_seed, settings):
        lines += ["## Against the reference", "", reference, ""]
    lines += [
        "## Figures",
        "",
        *[f"![{Path(link).stem}]({link})" for link in figure_links],
        "",
        f"## Metrics per {REGISTRY[regularizer].symbol} (mean ± std over seeds)",
        "",
        markdown_table(
            per_lambda_table(grid, metrics["seeds"] * metrics["cv"]["folds"]),
            table_columns(regularizer),
            {c: str for c in TABLE_COLUMNS if c != "lambda"},
        ),
        "",
        "_Generated by the `report_synthetic` stage of dvc.yaml from the study's metrics; "
        "rerun `dvc repro` to refresh._",
        "",
    ]
    return "\n".join(lines)


def finding(base: dict, reg: dict, contrast: float, regularizer: str, n_train: int) -> str:
    ratio = base["test_loss"]["mean"] / reg["test_loss"]["mean"]
    verdict = (
        "The 95 % intervals over seeds do not overlap: the difference is far larger than the seed spread."
        if separated(base["test_loss"], reg["test_loss"])
        else (
            "The 95 % intervals over seeds overlap: "
            "with these seeds the difference is not distinguishable from seed noise."
        )
    )
    return (
        f"Without a regulariser ({REGISTRY[regularizer].symbol} = 0) SGD fits the {n_train} training points "
        f"almost exactly (train loss {pm(base['train_loss'])}) but the test loss is {pm(base['test_loss'])}: "
        f"it overfits. With {regularizer} at {REGISTRY[regularizer].symbol} = {fmt_lambda(contrast)} "
        f"the train loss rises to {pm(reg['train_loss'])} while the test loss falls to {pm(reg['test_loss'])}, "
        f"{ratio:,.0f}× lower, and ‖w‖ shrinks from {pm(base['w_norm'])} to {pm(reg['w_norm'])}. " + verdict
    )


def cv_sentence(metrics: dict, regularizer: str, strength_grid: tuple[float, ...]) -> str:
    cv, grid, sym = metrics["cv"], metrics["grid"], REGISTRY[regularizer].symbol
    best = cv["best_lambda"]
    if best is None:
        return (
            f"{cv['folds']}-fold cross-validation on each seed's training set chooses no {sym}: at every {sym} of the "
            "grid more than half the folds were unstable, or the runs diverged. "
            + unstable_sentence(grid, sym, metrics["seeds"] * cv["folds"])
        )
    counts = ", ".join(f"{sym} = {key.removeprefix('lambda_')} on {n}" for key, n in cv["chosen"].items() if n)
    text = (
        f"{cv['folds']}-fold cross-validation on each seed's training set (the test set never takes part) chooses "
        f"{counts} of {metrics['seeds']} seeds; the lowest CV loss averaged over seeds is at "
        f"{sym} = {fmt_lambda(best)}, "
        f"where the test loss is {pm(grid[f'lambda_{best:g}']['test_loss'])} against "
        f"{pm(grid[f'lambda_{best:g}']['reference_test_loss'])} for the {REGISTRY[regularizer].exact} solution."
    )
    text += " " + unstable_sentence(grid, sym, metrics["seeds"] * cv["folds"])
    edge = {min(strength_grid): "smallest", max(strength_grid): "largest"}.get(best)
    if edge:
        beyond = (
            f"{max(strength_grid) * 3:g}, {max(strength_grid) * 10:g}"
            if edge == "largest"
            else f"{min(strength_grid) / 10:g}"
        )
        text += (
            f" That λ is the grid's {edge}, so the optimum may lie beyond it: extend the grid and rerun, e.g. "
            f"`dvc exp run -S 'synthetic.strengths.{regularizer}="
            f"[{', '.join(f'{v:g}' for v in strength_grid)}, {beyond}]'`."
        )
    return text


def unstable_sentence(grid: dict, sym: str, folds: int) -> str:
    """How many CV folds were unstable at each strength (their training blew up) and what the choice did with them."""
    counts = {key.removeprefix("lambda_"): run["unstable_folds"] for key, run in grid.items()}
    if not any(counts.values()):
        return (
            f"No fold was unstable: at every {sym} all {folds} folds (seeds × folds) ended with a lower training loss "
            "than they started from."
        )
    named = ", ".join(f"{sym} = {strength}: {n} of {folds}" for strength, n in counts.items() if n)
    text = (
        f"Unstable folds, whose training loss ended above where it started (SGD blowing up, short of diverging): "
        f"{named}; none at the other {sum(1 for n in counts.values() if not n)} strengths. They are left out of "
        "the CV loss, and a strength with more than half its folds unstable is never chosen."
    )
    for strength, n in counts.items():
        run = grid[f"lambda_{strength}"]
        if 2 * n > folds and run["test_loss"]["mean"] is not None:
            text += (
                f" Trained on the whole training set, {sym} = {strength} ends at test loss {pm(run['test_loss'])} "
                f"({run['diverged']} seeds diverged): cross-validation cannot rank a strength whose folds blow up "
                "where the full runs do not."
            )
    return text


def optimum_sentence(grid: dict, metrics: dict, regularizer: str, epochs: int) -> str:
    """How far SGD is from the exact optimum of its own objective, and where it closes the gap."""
    exact, sym = REGISTRY[regularizer].exact, REGISTRY[regularizer].symbol
    ratios = {
        float(k.removeprefix("lambda_")): v["test_loss"]["mean"] / v["reference_test_loss"]["mean"]
        for k, v in grid.items()
        if v["test_loss"]["mean"]
    }
    close = [strength for strength, ratio in ratios.items() if ratio <= 1.25]
    reach = (
        (
            f"SGD comes within 25% of the {exact} test loss (means over seeds) "
            f"only from {sym} = {fmt_lambda(min(close))} on"
        )
        if close
        else f"SGD stays more than 25% above the {exact} test loss at every {sym} of the grid"
    )
    ridge = [v["reference_test_loss"]["mean"] for v in grid.values()]
    return (
        f"{reach}; below that, what remains after {epochs} epochs is the random initialisation, which each "
        f"step {REGISTRY[regularizer].step_shrink}. The {exact} test loss is {min(ridge):.3g}–{max(ridge):.3g} "
        "across the grid; predicting the training mean (w = 0) gives "
        f"{pm(metrics['reference']['zero_weight_test_loss'])}, "
        f"and the noise floor σ²/2 is {metrics['reference']['noise_floor']:.2g}."
    )


def reference_table(by_seed: pd.DataFrame, settings: Settings) -> str | None:
    """Our mean and min–max over seeds beside the reference implementation's band, where the setup is the reference
    one."""
    spec = settings.synthetic
    setup = spec.data.model_dump() | spec.train.model_dump()
    if spec.regularizer != BASELINE or any(setup[key] != value for key, value in REFERENCE_SETUP.items()):
        return None  # the reference implementation's bands are for weight decay (l2) in its setup
    rows = ["| λ | metric | here: mean (min–max) | reference band | inside |", "|---:|---|---:|---:|---|"]
    for (implementation, strength), bands in REFERENCE_BANDS.items():
        runs = by_seed[by_seed["lambda"] == strength]
        if implementation != spec.train.implementation or runs.empty:
            continue
        for metric, (low, high) in bands.items():
            values = runs[metric]
            inside = low <= values.mean() <= high
            rows.append(
                f"| {fmt_lambda(strength)} | {metric.replace('_', ' ')} | "
                f"{values.mean():.3g} ({values.min():.3g}–{values.max():.3g}) "
                f"| {low:g}–{high:g} | {'yes' if inside else 'no'} |"
            )
    return "\n".join(rows) if len(rows) > 2 else None


TABLE_COLUMNS = {
    "lambda": "λ",
    "train_loss": "train loss",
    "test_loss": "test loss",
    "w_norm": "‖w‖",
    "zeros": "exact zeros",
    "cv_loss": "CV loss",
    "reference_test_loss": "exact optimum's test loss",
    "reference_zeros": "exact optimum's zeros",
    "diverged": "seeds diverged",
    "unstable_folds": "unstable CV folds",
}


def table_columns(regularizer: str) -> dict[str, str]:
    return TABLE_COLUMNS | {
        "lambda": REGISTRY[regularizer].symbol,
        "reference_test_loss": f"{REGISTRY[regularizer].exact} test loss",
        "reference_zeros": f"{REGISTRY[regularizer].exact} zeros",
    }


def per_lambda_table(grid: dict, folds: int) -> pd.DataFrame:
    """Per strength, each metric's mean ± std over seeds, the seeds that diverged and the CV folds (of `folds`, over
    seeds) that were unstable."""
    rows = [
        {"lambda": float(key.removeprefix("lambda_"))}
        | {c: pm(run[c]) for c in list(TABLE_COLUMNS)[1:-2]}
        | {"diverged": str(run["diverged"]), "unstable_folds": f"{run['unstable_folds']} of {folds}"}
        for key, run in grid.items()
    ]
    return pd.DataFrame(rows)


def parser() -> argparse.ArgumentParser:
    cli = stage.parser_with_paths(
        __doc__,
        "python -m stages.report_synthetic",
        {
            "metrics": "the DVC metrics file evaluate_synthetic wrote",
            "by-seed": "final metrics per (regulariser, seed, strength)",
            "grids": "the grids' folder: the studied regulariser's history and run record",
            "page": "the report page (output)",
            "figures": "the folder of the report's figures (output)",
        },
    )
    return cli


if __name__ == "__main__":
    stage.run_stage(main, parser())
