"""The table of a benchmark: Dice per arm over folds, the paired test against the reference arm, the
run-by-run pairs behind it, and the same for several benchmarks put together (`nnunet-mim compare`)."""
import csv
import os
import re
import textwrap
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


def arms_in(rows: List[dict]) -> List[str]:
    """The arms of ``rows``, in the order they first appear."""
    return list(dict.fromkeys(r["arm"] for r in rows))


RESULTS_NAME = "downstream"  # a benchmark's outputs: downstream.md, downstream_runs.csv, ... (write_outputs)


def read_runs(results: str) -> Tuple[List[dict], str]:
    """A finished benchmark's rows (from its results folder or its downstream_runs.csv), typed as
    ``run`` made them, and its title (the first line of downstream.md next to it; "" if absent)."""
    runs_csv = f"{RESULTS_NAME}_runs.csv"
    path = os.path.join(results, runs_csv) if os.path.isdir(results) else results
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {runs_csv} in {results}: name a results folder of nnunet-mim benchmark")
    markdown = os.path.join(os.path.dirname(path), f"{RESULTS_NAME}.md")
    title = open(markdown).readline().strip() if os.path.isfile(markdown) else ""
    label_seed, init_seed = titled_label_seed(title), titled_init_seed(title)

    def seed(row: dict, field: str, titled: Optional[int]) -> Optional[int]:
        return int(row[field]) if row.get(field) else titled  # older rows do not name it: the title does
    with open(path, newline="") as f:
        rows = [dict(r, fraction=float(r["fraction"]), fold=int(r["fold"]), dice=float(r["dice"]),
                     label_seed=seed(r, "label_seed", label_seed), init_seed=seed(r, "init_seed", init_seed))
                for r in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{path} holds no runs")
    return rows, title


def titled_init_seed(title: str) -> int:
    """The init seed of a benchmark whose rows do not name theirs (written before they did): its title
    says "init seed N" for a seed other than 0."""
    named = re.search(r"init seed (\d+)", title)
    return int(named.group(1)) if named else 0


def titled_label_seed(title: str) -> Optional[int]:
    """The label draw (--seed) of a benchmark whose rows do not name theirs: its title says "seed N"
    (None for a title that does not, or no title)."""
    named = re.search(r"(?<!init )\bseed (\d+)", title)
    return int(named.group(1)) if named else None


def differing_arms(benchmarks: Dict[str, List[dict]]) -> set:
    """The arms whose runs differ between benchmarks (label -> rows): another trainer, pre-training or
    label draw (--seed: other labelled cases in each fold), or other Dice at the same labels, fold and
    init seed. MiM pre-trained two ways differs; scratch reused in one work folder (the same Dice for
    every class) does not, nor does scratch at two init seeds (its runs are then averaged per fold)."""
    scores, settings = {}, {}  # (label, arm, fraction, fold, init seed) -> {class: dice}; arm -> field -> values
    for label, rows in benchmarks.items():
        for r in rows:
            scores.setdefault((label, r["arm"], r["fraction"], r["fold"], r["init_seed"]), {})[r["class"]] = r["dice"]
            found = settings.setdefault(r["arm"], {"trainer": set(), "pretraining": set(), "label_seed": set()})
            for field in found:
                if r.get(field) is not None:  # runs written before rows named these fields do not say
                    found[field].add(r[field])
    differing = {arm for arm, found in settings.items() if any(len(values) > 1 for values in found.values())}
    first_scores = {}
    for (label, *run), dice in scores.items():
        if first_scores.setdefault(tuple(run), dice) != dice:
            differing.add(run[0])
    return differing


def merge_benchmarks(tables: Dict[str, List[dict]], differing: set, key: Sequence[str]) -> List[dict]:
    """Rows of several benchmarks (label -> rows: runs' Dice or curves) as one benchmark's, each
    tagged with its benchmark's label. An arm in ``differing`` is named "ARM LABEL" in every
    benchmark, so that no fold is averaged or paired across two different runs; a row whose arm and
    ``key`` fields an earlier benchmark already gave belongs to the same run and is kept once."""
    merged, kept = [], set()
    for label, rows in tables.items():
        for r in rows:
            arm = f"{r['arm']} {label}" if r["arm"] in differing else r["arm"]
            identity = (arm, *(r[field] for field in key))
            if identity not in kept:
                kept.add(identity)
                merged.append(dict(r, arm=arm, benchmark=label))
    return merged


def seeds_by_fold(rows: List[dict]) -> Dict[int, Dict[int, float]]:
    """fold -> {init seed: Dice} of the rows of one arm, label fraction and class (rows without an
    init seed are seed 0's)."""
    runs: Dict[int, Dict[int, float]] = {}
    for r in rows:
        runs.setdefault(r["fold"], {})[r.get("init_seed", 0)] = r["dice"]
    return runs


def seeds_in(runs: Dict[int, Dict[int, float]]) -> List[int]:
    """The init seeds of ``seeds_by_fold``'s runs, in the order they were run."""
    return list(dict.fromkeys(seed for by_seed in runs.values() for seed in by_seed))


def fold_means(runs: Dict[int, Dict[int, float]]) -> Dict[int, float]:
    """fold -> the mean Dice over the init seeds run at that fold. Seeds are averaged before folds are
    paired: a fold's figure then holds less of the random initialisation's noise, and the paired test
    stays one over the folds, whose cases differ, not over runs that share their cases."""
    return {fold: float(np.mean(list(seeds.values()))) for fold, seeds in runs.items()}


def summarise(rows: List[dict], reference: str = "scratch") -> List[dict]:
    """Mean and sd over folds per arm, fraction and class (each fold the mean over its init seeds);
    difference to the reference arm and a paired t-test over the folds."""
    from scipy.stats import ttest_rel
    table = []
    classes = list(dict.fromkeys(r["class"] for r in rows))  # as the runs list them: labels, then mean
    keys = sorted({(r["fraction"], r["class"]) for r in rows}, key=lambda k: (k[0], classes.index(k[1])))
    arms = arms_in(rows)
    for fraction, cls in keys:
        runs = {a: seeds_by_fold([r for r in rows if (r["arm"], r["fraction"], r["class"]) == (a, fraction, cls)])
                for a in arms}
        per_arm = {a: fold_means(runs[a]) for a in arms}
        for arm in arms:
            folds = sorted(per_arm[arm])
            if not folds:  # combined benchmarks: an arm need not be run at every label fraction
                continue
            values = np.array([per_arm[arm][f] for f in folds])
            entry = {"fraction": fraction, "class": cls, "arm": arm, "folds": len(folds),
                     "init_seeds": " ".join(map(str, seeds_in(runs[arm]))), "mean": float(values.mean()),
                     "sd": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                     "diff_vs_reference": float("nan"), "p_vs_reference": float("nan")}
            base = per_arm.get(reference, {})
            paired = [f for f in folds if f in base]
            if arm != reference and paired:
                diff = np.array([per_arm[arm][f] - base[f] for f in paired])
                entry["diff_vs_reference"] = float(diff.mean())
                if len(paired) > 1 and np.any(diff != diff[0]):
                    entry["p_vs_reference"] = float(ttest_rel([per_arm[arm][f] for f in paired],
                                                              [base[f] for f in paired]).pvalue)
            table.append(entry)
    return table


def summary_lines(table: List[dict], reference: str) -> List[str]:
    """Markdown lines of ``summarise``'s entries: one row per label fraction, class and arm."""
    fmt = lambda v, spec: "n/a" if v != v else format(v, spec)  # noqa: E731  (nan -> n/a)
    lines = [f"| labels | class | arm | folds | init seeds | Dice mean | sd | vs {reference} | paired p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in table:
        lines.append(f"| {e['fraction']:.0%} | {e['class']} | {e['arm']} | {e['folds']} | {e['init_seeds']} | "
                     f"{e['mean']:.3f} | {fmt(e['sd'], '.3f')} | {fmt(e['diff_vs_reference'], '+.3f')} | "
                     f"{fmt(e['p_vs_reference'], '.3f')} |")
    return lines


def mean_dice_against(rows: List[dict], reference: str) -> List[str]:
    """Markdown lines: every arm's mean Dice against a second reference, for under the main table
    (scratch-default: the pre-trained arms against scratch at its own schedule)."""
    table = [e for e in summarise(rows, reference) if e["class"] == "mean"]
    return [f"Mean Dice against {reference}:", ""] + summary_lines(table, reference)


def per_fold_table(rows: List[dict]) -> List[str]:
    """Markdown lines: the mean Dice of every run, one line per label fraction and arm, one column per
    fold ("-" where that arm has no run of that fold); an arm run at several init seeds has a line per
    seed, then the line of their means (the figures paired)."""
    mean_rows = [r for r in rows if r["class"] == "mean"]
    folds = sorted({r["fold"] for r in mean_rows})
    lines = ["| labels | arm | " + " | ".join(f"fold {f}" for f in folds) + " |", "|---|---|" + "---|" * len(folds)]

    def add(fraction: float, name: str, dice: Dict[int, float]) -> None:
        lines.append(f"| {fraction:.0%} | {name} | " + " | ".join(f"{dice[f]:.3f}" if f in dice else "-" for f in folds)
                     + " |")
    for fraction in sorted({r["fraction"] for r in mean_rows}):
        for arm in arms_in(rows):
            runs = seeds_by_fold([r for r in mean_rows if (r["arm"], r["fraction"]) == (arm, fraction)])
            seeds = seeds_in(runs)
            if len(seeds) > 1:
                for seed in seeds:
                    add(fraction, f"{arm}, init seed {seed}", {f: by_seed[seed] for f, by_seed in runs.items()
                                                               if seed in by_seed})
                add(fraction, f"{arm}, mean of {len(seeds)} seeds", fold_means(runs))
            elif seeds:
                add(fraction, arm, fold_means(runs))
    return lines


def paragraphs(*blocks: Sequence[str]) -> List[str]:
    """The lines of the non-empty blocks, a blank line between one block and the next."""
    lines: List[str] = []
    for block in blocks:
        if block:
            lines += ([""] if lines else []) + list(block)
    return lines


def write_outputs(rows: List[dict], folder: str, title: str, reference: str = "scratch",
                  name: str = RESULTS_NAME, notes: Sequence[str] = ()) -> str:
    """NAME_runs.csv (one row per run and class), NAME.csv/.md (summary, then ``notes``), NAME.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}_runs.csv"), "w", newline="") as f:
        # every field of every row: compare joins older benchmarks, whose rows name fewer
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(field for r in rows for field in r)))
        writer.writeheader()
        writer.writerows(rows)
    table = summarise(rows, reference)
    with open(os.path.join(folder, f"{name}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    markdown = "\n".join(paragraphs([title], summary_lines(table, reference),
                                    ["Mean Dice per fold (the pairs behind each paired test):"], per_fold_table(rows),
                                    notes))
    with open(os.path.join(folder, f"{name}.md"), "w") as f:
        f.write(markdown + "\n")
    fig, ax = plt.subplots(figsize=(7, 5))
    for arm in arms_in(rows):
        points = sorted((e["fraction"], e["mean"], e["sd"]) for e in table if e["arm"] == arm and e["class"] == "mean")
        if points:
            x, y, sd = zip(*points)
            ax.errorbar([100 * v for v in x], y, yerr=[0 if s != s else s for s in sd], marker="o", capsize=3,
                        label=arm)
    ax.set_xlabel("labelled training cases (%)")
    ax.set_ylabel("mean foreground Dice (validation folds)")
    ax.set_title(textwrap.fill(title, 100), fontsize=7)  # the note can be long
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, f"{name}.png"), dpi=100)
    plt.close(fig)
    return markdown
