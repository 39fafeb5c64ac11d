"""Every regulariser side by side, for one study (wdlab/regularizers.py defines them), each over its own
strength grid on every seed. One figure per question (loss or accuracy vs strength, sparsity vs strength, ‖w‖ vs
strength) and a page that states each finding with its uncertainty."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from wdlab import figures, stage
from wdlab.files import grid_folders, read_json, read_table
from wdlab.regularizers import BASELINE, REGISTRY, sharing_baseline_zero, zero_makers
from wdlab.results import fmt_lambda, markdown_table, pm, separated
from wdlab.settings import REGULARIZERS, Settings
from wdlab.tracking import Tracker


def main(settings: Settings, args: argparse.Namespace) -> None:
    metrics = read_json(args.metrics, made_by=f"evaluate_{args.study}")
    folders = grid_folders(args.grids, REGULARIZERS)
    figures.set_theme()
    if args.study == "synthetic":
        by_seed = read_table(
            args.by_seed,
            "evaluate_synthetic",
            required=("regularizer", "seed", "lambda", "test_loss", "w_norm", "zeros"),
        )
        table = read_table(args.table, "evaluate_synthetic", required=("regularizer", "lambda", "test_loss_mean"))
        pngs = synthetic_figures(by_seed, settings.synthetic.data.n_features, args.figures)
        page = synthetic_page(metrics, table, settings, figures.relative_to_page(pngs, args.page))
        experiment = settings.tracking.experiment_synthetic
    else:
        by_seed = read_table(
            args.by_seed,
            "evaluate_cifar10",
            required=("regularizer", "seed", "lambda", "test_accuracy", "gap_accuracy", "w_norm"),
        )
        table = read_table(args.table, "evaluate_cifar10", required=("regularizer", "lambda", "test_accuracy_mean"))
        norms = pd.concat(
            [
                read_table(
                    folder.layer_norms,
                    f"train_cifar10@{name}",
                    required=("regularizer", "seed", "lambda", "epoch", "layer", "norm"),
                )
                for name, folder in folders.items()
            ]
        )
        pngs = cifar_figures(by_seed, norms, args.figures)
        page = cifar_page(metrics, table, settings, figures.relative_to_page(pngs, args.page))
        experiment = settings.tracking.experiment_cifar10
    records = {f"train_{args.study}@{name}": folder.record for name, folder in folders.items()}  # every grid's run
    figures.publish(args.page, page, pngs, Tracker(settings.tracking, experiment), records, folder="comparison")


# ── figures: one panel per regulariser, each over its own strength grid, mean and 95 % band over seeds ─


def per_regularizer(
    by_seed: pd.DataFrame,
    draw: Callable[[plt.Axes, pd.DataFrame, str], None],
    ylabel: str,
    title: str,
    path: Path,
    yscale: str = "linear",
) -> Path:
    present = [r for r in REGULARIZERS if r in set(by_seed["regularizer"])]
    fig, axes = plt.subplots(1, len(present), figsize=(3.6 * len(present), 4.4), sharey=True, squeeze=False)
    for ax, regularizer in zip(axes[0], present):
        rows = by_seed[by_seed["regularizer"] == regularizer]
        draw(ax, rows, regularizer)
        figures.lambda_axis(ax, rows["lambda"])
        ax.set(yscale=yscale, xlabel=REGISTRY[regularizer].strength_label, ylabel=ylabel, title=regularizer)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0]:
        if ax.get_legend():
            ax.get_legend().remove()
    if handles:
        fig.legend(
            handles, labels, loc="lower center", ncols=len(labels), fontsize="small", bbox_to_anchor=(0.5, -0.02)
        )
    fig.suptitle(f"{title}\n({figures.band_note(by_seed)})")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return figures.save(fig, path)


def lines(columns: dict[str, str], dashed: Sequence[str] = ()) -> Callable[[plt.Axes, pd.DataFrame, str], None]:
    """A panel drawer: each column a curve (label: its name), dashed for the exact optima."""

    def draw(ax: plt.Axes, rows: pd.DataFrame, regularizer: str) -> None:
        for i, (column, label) in enumerate(columns.items()):
            sns.lineplot(
                data=rows,
                x="lambda",
                y=column,
                ax=ax,
                marker="o",
                color=sns.color_palette()[i],
                linestyle="--" if column in dashed else "-",
                label=label.format(exact=REGISTRY[regularizer].exact),
                **figures.SEED_BAND,
            )

    return draw


def synthetic_figures(by_seed: pd.DataFrame, n_features: int, folder: Path) -> list[Path]:
    return [
        per_regularizer(
            by_seed,
            lines(
                {"test_loss": "SGD test loss", "reference_test_loss": "exact optimum's test loss"},
                ["reference_test_loss"],
            ),
            "final test loss (ŷ − y)²/2",
            "Test loss vs strength: every regulariser cures the overfit of strength 0",
            folder / "test_loss_vs_strength.png",
            yscale="log",
        ),
        per_regularizer(
            by_seed,
            lines({"zeros": "SGD: exact zeros", "reference_zeros": "exact optimum: zeros"}, ["reference_zeros"]),
            f"weights exactly 0 (of {n_features})",
            f"Sparsity vs strength: only {zero_makers_named()} set weights to exactly zero",
            folder / "zeros_vs_strength.png",
        ),
        per_regularizer(
            by_seed,
            lines({"w_norm": "SGD ‖w‖", "reference_w_norm": "exact optimum's ‖w‖"}, ["reference_w_norm"]),
            "‖w‖₂",
            "‖w‖ vs strength",
            folder / "wnorm_vs_strength.png",
            yscale="log",
        ),
    ]


def cifar_figures(by_seed: pd.DataFrame, norms: pd.DataFrame, folder: Path) -> list[Path]:
    last = norms[norms["epoch"] == norms["epoch"].max()]
    layer_order = list(dict.fromkeys(last["layer"]))
    fig, axes = plt.subplots(1, 1, figsize=(10, 4.5))
    strongest = last.loc[last.groupby("regularizer")["lambda"].transform("max") == last["lambda"]]
    baseline = last[(last["regularizer"] == BASELINE) & (last["lambda"] == 0)]
    baseline = baseline.assign(regularizer=f"none ({BASELINE}, λ = 0)")
    shown = pd.concat([baseline, strongest], ignore_index=True)
    shown = shown.assign(run=shown["regularizer"] + shown["lambda"].map(lambda v: f" {fmt_lambda(v)}" if v else ""))
    sns.barplot(data=shown, x="layer", y="norm", hue="run", order=layer_order, ax=axes, **figures.SEED_BAND)
    axes.set(
        yscale="log",
        xlabel="layer",
        ylabel="‖W‖₂ after training",
        title="Per-layer weight norms: no regulariser vs each at its strongest",
    )
    axes.tick_params(axis="x", rotation=30)
    figures.save(fig, folder / "layer_norms.png")
    return [
        per_regularizer(
            by_seed,
            lines({"train_accuracy": "train", "valid_accuracy": "validation", "test_accuracy": "test"}),
            "final accuracy",
            "Accuracy vs strength, per regulariser",
            folder / "accuracy_vs_strength.png",
        ),
        per_regularizer(
            by_seed,
            lines({"gap_accuracy": "train − test accuracy"}),
            "generalisation gap",
            "Generalisation gap vs strength, per regulariser",
            folder / "gap_vs_strength.png",
        ),
        per_regularizer(
            by_seed,
            lines({"zero_fraction": "weights exactly 0"}),
            "fraction of conv/linear weights",
            f"Sparsity vs strength: only {zero_makers_named()} make exact zeros",
            folder / "zeros_vs_strength.png",
        ),
        per_regularizer(
            by_seed,
            lines({"w_norm": "‖θ‖"}),
            "‖θ‖₂ of conv/linear weights",
            "‖θ‖ vs strength",
            folder / "wnorm_vs_strength.png",
            yscale="log",
        ),
        folder / "layer_norms.png",
    ]


# ── the pages ──────────────────────────────────────────────────────────────────────────────────────


def synthetic_page(metrics: dict, table: pd.DataFrame, settings: Settings, links: list[str]) -> str:
    spec, compared = settings.synthetic, metrics["regularizers"]
    rows = [
        {
            "regularizer": r,
            "strength": fmt_lambda(c["cv_strength"]) if c["cv_strength"] is not None else "none: all unstable",
            "test": pm(c["test_loss"]),
            "exact": pm(c["reference_test_loss"]),
            "w": pm(c["w_norm"]),
            "zeros": pm(c["zeros"], ".1f"),
        }
        for r, c in compared.items()
    ]
    findings = [
        lowest_at_cv(compared),
        unstable_finding(compared, metrics["seeds"] * spec.cv_folds),
        *[
            line
            for regularizer in compared
            if (line := REGISTRY[regularizer].synthetic_finding(table, spec, metrics)) is not None
        ],
    ]
    return "\n".join(
        [
            "# Regularisers side by side: high-dimensional linear regression",
            "",
            f"_n_train = {spec.data.n_train}, d = {spec.data.n_features}; SGD, batch {spec.train.batch_size}, "
            f"lr {spec.train.lr:g}, {spec.train.epochs} epochs for every regulariser; {metrics['seeds']} seeds. "
            "Numbers are means ± std over seeds; figures show the mean with its 95 % band; dashed: each regulariser's "
            "exact optimum. The study page: [synthetic.md](synthetic.md)._",
            "",
            "## Findings",
            "",
            *findings,
            "",
            "## Each regulariser at the strength cross-validation chooses",
            "",
            markdown_table(
                pd.DataFrame(rows),
                {
                    "regularizer": "regulariser",
                    "strength": "CV strength",
                    "test": "test loss",
                    "exact": "exact optimum's test loss",
                    "w": "‖w‖",
                    "zeros": "exact zeros",
                },
                {c: str for c in ("regularizer", "strength", "test", "exact", "w", "zeros")},
            ),
            "",
            "## Figures",
            "",
            *[f"![{Path(link).stem}]({link})" for link in links],
            "",
            "_Generated by the `compare_synthetic` stage of dvc.yaml; rerun `dvc repro` to refresh._",
            "",
        ]
    )


def lowest_at_cv(compared: dict) -> str:
    """Which regulariser reaches the lowest mean test loss at its cross-validated strength, and whether that difference
    exceeds the seed spread; a regulariser CV chose no strength for (every strength unstable) takes no part."""
    chosen = {r: c for r, c in compared.items() if c["cv_strength"] is not None}
    if not chosen:
        return "- **Cross-validation chose no strength**: every strength of every regulariser had unstable folds."
    ranked = sorted(chosen, key=lambda r: chosen[r]["test_loss"]["mean"])
    lowest = chosen[ranked[0]]["test_loss"]["mean"]
    tied = [r for r in ranked if abs(chosen[r]["test_loss"]["mean"] - lowest) <= 1e-6 * abs(lowest)]  # l2 ≡ decoupled
    best, rest = " and ".join(tied), [r for r in ranked if r not in tied]
    beyond = [r for r in rest if separated(chosen[ranked[0]]["test_loss"], chosen[r]["test_loss"])]
    return (
        f"- **At its cross-validated strength**, {best} reach{'' if len(tied) > 1 else 'es'} the lowest mean "
        f"test loss, {pm(chosen[ranked[0]]['test_loss'])}; "
        + (
            f"{'their' if len(tied) > 1 else 'its'} 95 % interval over seeds lies below those of {', '.join(beyond)}"
            if beyond
            else "its 95 % interval overlaps every other's"
        )
        + (
            f", and overlaps {', '.join(r for r in rest if r not in beyond)}: "
            "that difference is within the seed spread."
            if len(beyond) < len(rest)
            else "."
        )
    )


def unstable_finding(compared: dict, folds: int) -> str:
    """The CV folds that blew up, per regulariser and strength, out of `folds` (seeds × folds) each."""
    unstable = [
        f"{r} {REGISTRY[r].symbol} = {key.removeprefix('lambda_')}: {at['unstable_folds']} of {folds} "
        f"(test loss on the whole training set {pm(at['test_loss'])})"
        for r, c in compared.items()
        for key, at in c["by_strength"].items()
        if at.get("unstable_folds")
    ]
    rule = (
        "**Unstable CV folds**, whose training loss ended above where it started (SGD blowing up, short of "
        "diverging), are left out of each strength's CV loss, and a strength with more than half its folds "
        "unstable is never chosen"
    )
    return f"- {rule}: " + ("; ".join(unstable) + "; no other strength had any." if unstable else "there were none.")


def zero_makers_named() -> str:
    return " and ".join(zero_makers()) or "none"


def cifar_page(metrics: dict, table: pd.DataFrame, settings: Settings, links: list[str]) -> str:
    study, compared = settings.cifar10, metrics["regularizers"]
    ranked = sorted(compared, key=lambda r: -(compared[r]["test_accuracy"]["mean"] or 0))
    best = ranked[0]
    beyond = [r for r in ranked[1:] if separated(compared[best]["test_accuracy"], compared[r]["test_accuracy"])]
    rows = [
        {
            "regularizer": r,
            "strength": fmt_lambda(c["valid_strength"]),
            "valid": pm(c["valid_accuracy"]),
            "test": pm(c["test_accuracy"]),
            "gap": pm(c["gap_accuracy"]),
            "w": pm(c["w_norm"]),
            "zeros": pm(c["zero_fraction"], ".2%"),
        }
        for r, c in compared.items()
    ]
    seeds = metrics["seeds"]
    spread = (
        ("its 95 % interval over seeds lies above those of " + ", ".join(beyond))
        if beyond
        else (
            "its interval overlaps the others'"
            if seeds > 1
            else "with one seed no interval exists: run more seeds (`cifar10.seeds`) before reading a ranking"
        )
    )
    return "\n".join(
        [
            "# Regularisers side by side: CIFAR-10",
            "",
            f"_The same net (width {study.model.width}) and budget ({study.train.epochs} epochs, "
            f"batch {study.train.batch_size}, "
            f"{study.train.schedule} schedule) for every regulariser: "
            + "; ".join(f"{r}: {REGISTRY[r].cifar_method(study.train)}" for r in compared)
            + f". Strength 0 of {', '.join(sharing_baseline_zero(list(compared)))} is {BASELINE}'s λ = 0 run. "
            f"{seeds} seed(s); means ± std; the study page: [cifar10.md](cifar10.md)._",
            "",
            "## Findings",
            "",
            f"- Chosen on the validation split, {best} reaches the highest test accuracy, "
            f"{pm(compared[best]['test_accuracy'])}; {spread}.",
            *cifar_findings(table),
            "",
            "## Each regulariser at the strength validation chooses",
            "",
            markdown_table(
                pd.DataFrame(rows),
                {
                    "regularizer": "regulariser",
                    "strength": "strength",
                    "valid": "validation accuracy",
                    "test": "test accuracy",
                    "gap": "train − test gap",
                    "w": "‖θ‖",
                    "zeros": "exact zeros",
                },
                {c: str for c in ("regularizer", "strength", "valid", "test", "gap", "w", "zeros")},
            ),
            "",
            "## Figures",
            "",
            *[f"![{Path(link).stem}]({link})" for link in links],
            "",
            "_Generated by the `compare_cifar10` stage of dvc.yaml; rerun `dvc repro` to refresh._",
            "",
        ]
    )


def cifar_findings(table: pd.DataFrame) -> list[str]:
    """What each regulariser does at its strongest setting against none (l2's λ = 0): the gap, ‖θ‖ and exact zeros."""
    base = table[(table["regularizer"] == BASELINE) & (table["lambda"] == 0)]
    if base.empty:
        return []
    base = base.iloc[0]
    trained = table[table["gap_accuracy_mean"].notna()]  # a diverged strength has no final numbers
    strongest = trained.loc[trained.groupby("regularizer")["lambda"].idxmax()].set_index("regularizer")
    lines = []
    for regularizer in [r for r in REGULARIZERS if r in strongest.index]:
        row = strongest.loc[regularizer]
        lines.append(
            f"- {regularizer} at its strongest trained strength ({fmt_lambda(row['lambda'])}): "
            f"generalisation gap {row['gap_accuracy_mean']:+.3f} (none: {base['gap_accuracy_mean']:+.3f}), "
            f"‖θ‖ {row['w_norm_mean']:.3g} (none: {base['w_norm_mean']:.3g}), "
            f"exact zeros {row['zero_fraction_mean']:.1%} of the conv/linear weights."
        )
    return lines + [
        f"- Only {zero_makers_named()} can make exact zeros; the per-layer norms are in the last figure. "
        "With BatchNorm after every conv, shrinking a conv's weights leaves its output unchanged: decay there "
        "raises the effective learning rate rather than limiting the function, so ‖θ‖ and accuracy move less "
        "together than in the linear study."
    ]


def parser() -> argparse.ArgumentParser:
    cli = stage.parser_with_paths(
        __doc__,
        "python -m stages.compare_regularizers",
        {
            "metrics": "the study's DVC metrics file",
            "by-seed": "final metrics per (regulariser, seed, strength)",
            "table": "per (regulariser, strength): mean, std and 95 % interval over seeds",
            "grids": "the grids' folder: each regulariser's run record (and CIFAR-10 layer norms)",
            "page": "the comparison page (output)",
            "figures": "the folder of its figures (output)",
        },
    )
    cli.add_argument("study", choices=("synthetic", "cifar10"))
    return cli


if __name__ == "__main__":
    stage.run_stage(main, parser())
